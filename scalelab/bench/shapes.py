"""The benchmark shapes, importable without JAX (the PyTorch peer, scalelab/bench/torch_peer.py, reads them too)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from scalelab import ledger
from scalelab.model import ladder


@dataclass(frozen=True)
class BenchShape:
    """A benchmark case: one model shape (the ledger's record) and the batch it is timed with."""

    name: str
    shape: ledger.Shape
    batch_size: int = 16

    @classmethod
    def of(cls, name: str, batch_size: int = 16, *, vocab: int = 256, seq_len: int = 256, **arch) -> BenchShape:
        arch.setdefault("n_kv_heads", arch["n_heads"])
        return cls(name, ledger.Shape(vocab=vocab, seq_len=seq_len, **arch), batch_size)

    @classmethod
    def from_ladder(cls, name: str, batch_size: int = 16, vocab: int = 256, seq_len: int = 256) -> BenchShape:
        r = ladder.rung(name)
        return cls.of(name, batch_size, vocab=vocab, seq_len=seq_len, d_model=r["d_model"], n_layers=r["n_layers"],
                      n_heads=r["n_heads"], n_kv_heads=r["n_kv_heads"], d_ff=r["d_ff"])


# The CPU reference shape: vocab 256, d 256, 4 layers, 4 heads, seq 256, batch 16, a SwiGLU MLP
# with the FLOPs of a 4x GELU MLP (d_ff = 8/3 * 256 ~ 683).
REFERENCE = BenchShape.of("reference", d_model=256, n_layers=4, n_heads=4, d_ff=683)
CPU_LADDER = ("p150k", "p500k", "p1m", "p3m")
LONG_SEQUENCE = BenchShape.from_ladder("p1m", batch_size=4, seq_len=1024)
LONG_SEQUENCE = dataclasses.replace(LONG_SEQUENCE, name="p1m-seq1024")
# A GPT-2-small-sized model for accelerators: 85M non-embedding parameters, SwiGLU, vocabulary
# 50,304, sequence 1024 (the default shapes on GPU/TPU).
GPU_125M = BenchShape.of("gpu-125m", d_model=768, n_layers=12, n_heads=12, d_ff=2048, vocab=50304, seq_len=1024)
# Mixture-of-experts twins of the reference and GPU shapes: 8 experts as wide as the dense MLP,
# top-1 (Switch routing) with the default capacity dispatch, so that their active FLOPs are the
# dense shape's plus the router's: `scalelab bench` prints each beside its dense twin.
REFERENCE_MOE = BenchShape.of("reference-moe8", d_model=256, n_layers=4, n_heads=4, d_ff=683, experts=8, top_k=1)
GPU_125M_MOE = BenchShape.of("gpu-125m-moe8", d_model=768, n_layers=12, n_heads=12, d_ff=2048, vocab=50304,
                             seq_len=1024, experts=8, top_k=1)
MOE_TWINS = {REFERENCE_MOE.name: REFERENCE.name, GPU_125M_MOE.name: GPU_125M.name}
NAMED = {s.name: s for s in (REFERENCE, LONG_SEQUENCE, GPU_125M, REFERENCE_MOE, GPU_125M_MOE)}


def by_name(name: str) -> BenchShape:
    """A named shape (reference, p1m-seq1024, gpu-125m, their -moe8 twins) or any ladder size (p1m, p3m, ...)."""
    if name in NAMED:
        return NAMED[name]
    if name in ladder.WIDTH_DEPTH:
        return BenchShape.from_ladder(name)
    raise ValueError(f"unknown bench shape {name!r}: use {', '.join(NAMED)} or a ladder size "
                     f"({', '.join(ladder.WIDTH_DEPTH)})")
