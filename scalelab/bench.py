"""`scalelab bench`: training-step speed against this machine's measured peak, from one process.

For each shape it builds the real train step (step.build_steps: same model, optimizer, shardings
as a training run), compiles it, runs warm-up steps, then times `--steps` steps one by one with a
device sync after each and reports the median. Model FLOPs come from the ledger, so the MFU here
is the MFU a training run reports: ledger FLOPs per token x tokens/s / peak FLOP/s, where the peak
is a jitted 2048^3 matmul measured in this process (or the datasheet figure on GPU/TPU).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass

import jax
import numpy as np
from omegaconf import OmegaConf

from scalelab import hardware, ladder, ledger, optim
from scalelab import mesh as meshlib
from scalelab.config import MeshConfig, OptimizerConfig, ScheduleConfig
from scalelab.model import ModelSpec, resolve_attention
from scalelab.step import ModelFns, auto_grad_accum, build_steps


@dataclass
class BenchShape:
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    vocab: int = 256
    seq_len: int = 256
    batch_size: int = 16
    n_kv_heads: int = 0  # 0: n_heads

    @classmethod
    def from_ladder(cls, name: str, **kw) -> BenchShape:
        r = ladder.rung(name)
        return cls(name=name, d_model=r["d_model"], n_layers=r["n_layers"], n_heads=r["n_heads"],
                   d_ff=r["d_ff"], n_kv_heads=r["n_kv_heads"], **kw)


# The reference shape of the performance issue: vocab 256, d 256, 4 layers, 4 heads, seq 256,
# batch 16, a SwiGLU MLP with the FLOPs of a 4x GELU MLP (d_ff = 8/3 * 256 ~ 683).
REFERENCE = BenchShape("reference", d_model=256, n_layers=4, n_heads=4, d_ff=683)
CPU_LADDER = ("p150k", "p500k", "p1m", "p3m")
LONG_SEQUENCE = BenchShape("p1m-seq1024", **{k: v for k, v in asdict(BenchShape.from_ladder("p1m")).items()
                                            if k not in ("name", "seq_len", "batch_size")},
                           seq_len=1024, batch_size=4)


# the accelerator target of issue 8, a GPT-2-small-sized model: 85M non-embedding parameters (124M
# if the embeddings were tied; untied here), SwiGLU, vocabulary 50,304, sequence 1024. On a GPU:
# `scalelab bench --precision bf16 --shapes gpu-125m` (the default shapes there)
GPU_125M = BenchShape("gpu-125m", d_model=768, n_layers=12, n_heads=12, d_ff=2048, vocab=50304, seq_len=1024,
                      batch_size=16)


def default_shapes() -> list[BenchShape]:
    if jax.default_backend() != "cpu":
        return [GPU_125M, REFERENCE]
    return [REFERENCE] + [BenchShape.from_ladder(n) for n in CPU_LADDER] + [LONG_SEQUENCE]


def bench_shape(shape: BenchShape, precision: str = "fp32", grad_accum: int = 0, steps: int = 20,
                warmup: int = 3, attention: str = "auto") -> dict:
    n_kv = shape.n_kv_heads or shape.n_heads
    head_dim = shape.d_model // shape.n_heads
    spec = ModelSpec(d_model=shape.d_model, n_layers=shape.n_layers, n_heads=shape.n_heads, n_kv_heads=n_kv,
                     d_ff=shape.d_ff, vocab=shape.vocab, head_dim=head_dim, compute_dtype=precision,
                     attention=resolve_attention(attention, precision, shape.seq_len, head_dim))
    lshape = ledger.Shape(d_model=shape.d_model, n_layers=shape.n_layers, n_heads=shape.n_heads, n_kv_heads=n_kv,
                          d_ff=shape.d_ff, vocab=shape.vocab, seq_len=shape.seq_len)
    mesh_cfg = OmegaConf.structured(MeshConfig)
    mesh = meshlib.make_mesh(mesh_cfg)
    rules = OmegaConf.to_container(mesh_cfg.rules)
    if grad_accum and shape.batch_size % grad_accum:
        raise SystemExit(f"--grad-accum {grad_accum} does not divide {shape.name}'s batch of {shape.batch_size}")
    grad_accum = grad_accum or auto_grad_accum(shape.batch_size, shape.seq_len,
                                               meshlib.batch_shards(rules, mesh, shape.batch_size), jax.default_backend())
    schedule = optim.schedule_values(OmegaConf.structured(ScheduleConfig), 1e-3, 10_000)
    opt_cfg = OmegaConf.structured(OptimizerConfig(lr=1e-3))
    steps_fns = build_steps(ModelFns(spec), optim.make_optimizer(opt_cfg), "cosine", schedule, mesh,
                            rules, shape.batch_size, grad_accum)
    rng = np.random.default_rng(0)
    batch = jax.device_put(rng.integers(0, shape.vocab, (shape.batch_size, shape.seq_len + 1), dtype=np.int32),
                           steps_fns.batch_sharding)
    state = steps_fns.init_state(0)
    t0 = time.perf_counter()
    state, metrics = steps_fns.train_step(state, batch)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - t0
    for _ in range(warmup):
        state, metrics = steps_fns.train_step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = steps_fns.train_step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_seconds = statistics.median(times)
    tokens_per_second = shape.batch_size * shape.seq_len / step_seconds
    fpt = ledger.flops_per_token(lshape)
    peak, method = hardware.peak_flops(precision)
    return {
        **asdict(shape), "precision": precision, "attention": spec.attention, "grad_accum": grad_accum, "devices": jax.device_count(),
        "mesh": dict(mesh.shape), "params": ledger.non_embedding_params(lshape),
        "compile_seconds": compile_seconds, "step_seconds": step_seconds,
        "step_seconds_min": min(times), "tokens_per_second": tokens_per_second,
        "flops_per_token": fpt, "model_flops_per_second": fpt * tokens_per_second,
        "peak_flops": peak, "peak_method": method, "mfu": fpt * tokens_per_second / peak,
    }


def bench_data(seq_len: int = 256, batch_size: int = 16, batches: int = 300) -> dict:
    """Tokens/s the Grain pipeline delivers from the built-in corpus (shuffled windows, batched)."""
    from scalelab.data import pipeline
    from scalelab.data.stdlib import open_stdlib

    store = open_stdlib()
    cfg = OmegaConf.create({"seq_len": seq_len, "prefetch": 4})
    it = pipeline.train_iterator(store, cfg, batch_size, seed=0, steps=batches)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches - 1):
        next(it)
    seconds = time.perf_counter() - t0
    return {"seq_len": seq_len, "batch_size": batch_size,
            "tokens_per_second": (batches - 1) * batch_size * seq_len / seconds}


def bench_compile_cache(shape: BenchShape = REFERENCE) -> dict:
    """Compile time of the train step with an empty persistent cache, then with a warm one."""
    import tempfile

    def first_step_seconds() -> float:
        jax.clear_caches()
        t0 = time.perf_counter()
        bench_shape(shape, steps=1, warmup=0)
        return time.perf_counter() - t0

    previous = jax.config.jax_compilation_cache_dir
    with tempfile.TemporaryDirectory() as cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        try:
            cold = first_step_seconds()
            warm = first_step_seconds()
        finally:
            jax.config.update("jax_compilation_cache_dir", previous)
    return {"shape": shape.name, "cold_seconds": cold, "warm_seconds": warm}


def bench_overhead(steps: int = 300, rounds: int = 2) -> dict:
    """Step time of a real training run with and without per-step logging and checkpoint.every=100.

    The two variants alternate for `rounds` rounds and each keeps its best round, so that a burst
    of load from elsewhere on the machine does not land on one variant only.
    """
    import tempfile
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from scalelab.train import CONFIG_DIR, run

    common = ["model=p150k", "data.seq_len=128", f"data.tokens={steps * 16 * 128}", "train.batch_size=16",
              "train.progress=false", "train.eval_tokens=2048"]
    variants = {"quiet": ["train.log_every=1000000", "checkpoint.every=0"],
                "logging+checkpoints": ["train.log_every=1", "checkpoint.every=100"]}
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"), tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            for name, extra in variants.items():
                summary = run(compose(config_name="train", overrides=common + extra), Path(tmp) / f"{name}-{i}")
                speeds[name].append(summary["tokens_per_second"])
    best = {name: max(values) for name, values in speeds.items()}
    return {"steps": steps, "rounds": speeds, "tokens_per_second": best,
            "overhead": best["quiet"] / best["logging+checkpoints"] - 1}


def format_table(rows: list[dict]) -> str:
    head = f"{'shape':<14}{'N':>11}{'prec':>6}{'attention':>11}{'acc':>4}{'compile s':>10}{'step ms':>9}{'tok/s':>10}{'GFLOP/s':>9}{'MFU':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<14}{r['params']:>11,}{r['precision']:>6}{r['attention']:>11}{r['grad_accum']:>4}{r['compile_seconds']:>10.1f}"
            f"{r['step_seconds'] * 1e3:>9.1f}{r['tokens_per_second']:>10,.0f}"
            f"{r['model_flops_per_second'] / 1e9:>9.1f}{r['mfu']:>7.1%}"
        )
    return "\n".join(lines)


def main(args) -> int:
    shapes = default_shapes()
    if args.shapes:
        wanted = set(args.shapes.split(","))
        shapes = [s for s in [REFERENCE, GPU_125M, LONG_SEQUENCE, *shapes] if s.name in wanted]
        shapes = list({s.name: s for s in shapes}.values()) + [
            BenchShape.from_ladder(n) for n in wanted if n in ladder.WIDTH_DEPTH and n not in {s.name for s in shapes}
        ]
    peak, method = hardware.peak_flops(args.precision)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; peak {peak / 1e9:,.1f} GFLOP/s ({method})")
    print("MFU = ledger FLOPs/token (6*(N_matmul + d*V) + 12*L*T*d_attn) x tokens/s / peak; "
          f"median of {args.steps} timed steps after warm-up\n")
    rows = []
    for shape in shapes:
        rows.append(bench_shape(shape, args.precision, args.grad_accum, args.steps))
        print(format_table(rows[-1:]).splitlines()[-1] if len(rows) > 1 else format_table(rows), flush=True)
    extras = {}
    if not args.no_extras:
        fastest = max(r["tokens_per_second"] for r in rows)
        extras["data"] = bench_data()
        ratio = extras["data"]["tokens_per_second"] / fastest
        print(f"\ndata pipeline: {extras['data']['tokens_per_second']:,.0f} tokens/s "
              f"= {ratio:.0f}x the fastest step above")
        extras["overhead"] = bench_overhead()
        best = extras["overhead"]["tokens_per_second"]
        print(f"logging every step + checkpoint.every=100: {extras['overhead']['overhead']:+.1%} step time "
              f"(p150k, seq 128, best of {len(extras['overhead']['rounds']['quiet'])} alternating runs: "
              + ", ".join(f"{name} {value:,.0f} tok/s" for name, value in best.items()) + ")")
        extras["compile_cache"] = bench_compile_cache()  # last: it points JAX's cache at a temporary dir
        print(f"compile + first step, reference shape: cold cache {extras['compile_cache']['cold_seconds']:.1f} s, "
              f"warm persistent cache {extras['compile_cache']['warm_seconds']:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_flops": peak, "peak_method": method, "results": rows, **extras}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="training-step speed (tokens/s, MFU) against the measured peak")
    p.add_argument("--shapes", help="comma-separated: reference, p150k, p500k, p1m, p3m, p1m-seq1024, gpu-125m, or any ladder size")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--grad-accum", type=int, default=0, help="microbatches per step; 0: auto, as in training")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--no-extras", action="store_true",
                   help="skip the data-pipeline, compile-cache and logging/checkpoint overhead measurements")
    p.set_defaults(func=main)
