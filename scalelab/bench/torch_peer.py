"""A PyTorch CPU trainer of scalelab's model, for `scalelab bench --against torch` (written for scalelab).

The same architecture as scalelab/model/transformer.py for a bench shape: token embedding ->
n_layers x [RMSNorm -> causal multi-head attention with RoPE (rotate-half, theta 1e4; GQA when
n_kv_heads < n_heads) -> residual, RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> output
projection (untied unless the shape ties it); no biases; RMSNorm eps 1e-6 with a learned scale;
init normal(0, 0.02), the attention and MLP output projections 0.02 / sqrt(2 n_layers). It trains
in eager mode (no torch.compile) in fp32 with `F.scaled_dot_product_attention(is_causal=True)`,
`torch.optim.AdamW` (its default foreach implementation; betas 0.9/0.95, weight decay 0.1 on the
matrices only, as scalelab) after a global-norm clip at 1.0, on one fixed batch of random tokens
(as `scalelab bench` does), with `torch.set_num_threads(os.cpu_count())`.

    python -m scalelab.bench.torch_peer --shape reference --steps 20 --json

prints one JSON line: the median step seconds of `--steps` timed steps after warm-up, tokens/s,
the parameter counts, and this process's 2048^3 fp32 matmul GFLOP/s before and after the steps.
Torch is imported only here, and JAX never is (the shapes come from scalelab/bench/shapes.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as e:  # the message `scalelab bench --against torch` shows when torch is missing
    raise ImportError("the PyTorch peer needs torch: pip install -e '.[bench]'") from e

from scalelab import ledger
from scalelab.bench.shapes import BenchShape, by_name

INIT_STD = 0.02
ROPE_THETA = 10000.0
NORM_EPS = 1e-6


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def rope_tables(seq_len: int, head_dim: int, theta: float = ROPE_THETA):
    """sin, cos of shape 1 x 1 x T x H/2 (heads-first layout, as the attention below holds q and k)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(seq_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return angles.sin()[None, None], angles.cos()[None, None]


def rotate(x, sin, cos):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, s: ledger.Shape):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = s.n_heads, s.n_kv_heads, s.head_dim
        self.wq = nn.Linear(s.d_model, s.n_heads * s.head_dim, bias=False)
        self.wk = nn.Linear(s.d_model, s.n_kv_heads * s.head_dim, bias=False)
        self.wv = nn.Linear(s.d_model, s.n_kv_heads * s.head_dim, bias=False)
        self.wo = nn.Linear(s.n_heads * s.head_dim, s.d_model, bias=False)

    def forward(self, x, sin, cos):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate(q, sin, cos), rotate(k, sin, cos)
        if self.n_kv_heads != self.n_heads:  # GQA: each kv head serves n_heads / n_kv_heads query heads
            group = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, s: ledger.Shape):
        super().__init__()
        self.w_gate = nn.Linear(s.d_model, s.d_ff, bias=False)
        self.w_up = nn.Linear(s.d_model, s.d_ff, bias=False)
        self.w_down = nn.Linear(s.d_ff, s.d_model, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, s: ledger.Shape):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(s.d_model), Attention(s)
        self.mlp_norm, self.mlp = RMSNorm(s.d_model), SwiGLU(s)

    def forward(self, x, sin, cos):
        x = x + self.attn(self.attn_norm(x), sin, cos)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, s: ledger.Shape):
        super().__init__()
        self.shape = s
        self.embed = nn.Embedding(s.vocab, s.d_model)
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.n_layers))
        self.final_norm = RMSNorm(s.d_model)
        self.lm_head = None if s.tied_embeddings else nn.Linear(s.d_model, s.vocab, bias=False)
        sin, cos = rope_tables(s.seq_len, s.head_dim)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("cos", cos, persistent=False)
        out_std = INIT_STD / math.sqrt(2 * s.n_layers)
        for name, p in self.named_parameters():
            if p.ndim >= 2:
                nn.init.normal_(p, 0.0, out_std if name.endswith(("wo.weight", "w_down.weight")) else INIT_STD)

    def forward(self, tokens_BxT):
        T = tokens_BxT.shape[1]
        sin, cos = self.sin[:, :, :T], self.cos[:, :, :T]
        x = self.embed(tokens_BxT)
        for block in self.blocks:
            x = block(x, sin, cos)
        x = self.final_norm(x)
        return self.lm_head(x) if self.lm_head is not None else x @ self.embed.weight.T


def param_counts(model: Transformer) -> dict:
    """Total and non-embedding parameters, in the ledger's convention (N excludes the embedding and
    the output matrix, includes every norm scale)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.embed.weight.numel() + (model.lm_head.weight.numel() if model.lm_head is not None else 0)
    return {"params": total - embedding, "params_total": total}


def make_optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` n^3 fp32 matmuls (after one warm-up), as scalelab measures its peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def train(case: BenchShape, steps: int = 20, warmup: int = 3, lr: float = 1e-3, seed: int = 0) -> dict:
    """Train `case` on one fixed random batch: one first step, `warmup` more, then `steps` timed ones."""
    s = case.shape
    torch.manual_seed(seed)
    model = Transformer(s)
    opt = make_optimizer(model, lr)
    batch = torch.randint(0, s.vocab, (case.batch_size, s.seq_len + 1), generator=torch.Generator().manual_seed(seed))
    inputs, targets = batch[:, :-1], batch[:, 1:]

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, s.vocab), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    losses = [step() for _ in range(1 + warmup)]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    step_seconds = statistics.median(times) if times else float("nan")
    return {"name": case.name, **param_counts(model), "batch_size": case.batch_size, "seq_len": s.seq_len,
            "steps": steps, "warmup": warmup, "step_seconds": step_seconds,
            "step_seconds_min": min(times) if times else float("nan"),
            "tokens_per_second": case.batch_size * s.seq_len / step_seconds, "losses": losses}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scalelab.bench.torch_peer", description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="reference", help="reference, p1m-seq1024, gpu-125m or a ladder size")
    p.add_argument("--steps", type=int, default=20, help="timed steps after warm-up (default 20)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON line (else a sentence)")
    args = p.parse_args(argv)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    peak_start = matmul_peak()
    result = train(by_name(args.shape), args.steps, args.warmup)
    peak_end = matmul_peak()
    result.update(peak_flops=peak_start, peak_flops_end=peak_end, threads=threads, torch=torch.__version__,
                  jax_imported="jax" in sys.modules)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"torch {result['torch']} {args.shape}: {result['tokens_per_second']:,.0f} tok/s "
              f"(median step {result['step_seconds'] * 1e3:.1f} ms), matmul peak {peak_start / 1e9:,.1f} -> "
              f"{peak_end / 1e9:,.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
