"""`scalelab bench`: training-step speed against this machine's measured peak, from one process.

For each shape it builds the real train step (step.build_steps: same model, optimizer, shardings
as a training run), compiles it, runs warm-up steps, then times `--steps` steps one by one with a
device sync after each and reports the median. Model FLOPs come from the ledger, so the MFU here
is the MFU a training run reports: ledger FLOPs per token x tokens/s / peak FLOP/s, where the peak
is a jitted 2048^3 matmul measured in this process (or the datasheet figure on GPU/TPU).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import numpy as np

from scalelab import ledger
from scalelab.bench.shapes import (
    CPU_LADDER,
    GPU_125M,
    GPU_125M_MOE,
    LONG_SEQUENCE,
    MOE_TWINS,
    REFERENCE,
    REFERENCE_MOE,
    BenchShape,
)
from scalelab.config import DataConfig, MeshConfig, OptimizerConfig, ScheduleConfig
from scalelab.model.functional import model_fns
from scalelab.model.transformer import ModelSpec, resolve_attention
from scalelab.runtime import hardware
from scalelab.train import mesh as meshlib
from scalelab.train import optim
from scalelab.train.step import auto_grad_accum, build_steps, rules_key


def default_shapes() -> list[BenchShape]:
    if jax.default_backend() != "cpu":
        return [GPU_125M, GPU_125M_MOE, REFERENCE]
    return [REFERENCE, REFERENCE_MOE] + [BenchShape.from_ladder(n) for n in CPU_LADDER] + [LONG_SEQUENCE]


def moe_lines(rows: list[dict]) -> list[str]:
    """Each MoE shape's speed beside its dense twin's (same active FLOPs per token but the router's)."""
    by_name = {r["name"]: r for r in rows}
    lines = []
    for moe_name, dense_name in MOE_TWINS.items():
        if moe_name in by_name and dense_name in by_name:
            m, d = by_name[moe_name], by_name[dense_name]
            lines.append(f"{moe_name} against {dense_name}: {m['tokens_per_second']:,.0f} vs "
                         f"{d['tokens_per_second']:,.0f} tokens/s ({m['tokens_per_second'] / d['tokens_per_second']:.2f}x), "
                         f"MFU (active FLOPs) {m['mfu']:.1%} vs {d['mfu']:.1%}, "
                         f"{m['params_total'] / d['params_total']:.1f}x the parameters")
    return lines


def build_bench_steps(case: BenchShape, precision: str, grad_accum: int, attention: str):
    """The real train step of a training run, for one benchmark case (one device)."""
    shape = case.shape
    spec = ModelSpec(shape=shape, compute_dtype=precision,
                     attention=resolve_attention(attention, precision, shape.seq_len, shape.head_dim))
    mesh_cfg = MeshConfig()
    mesh = meshlib.make_mesh(mesh_cfg)
    rules = mesh_cfg.rules
    if grad_accum and case.batch_size % grad_accum:
        raise ValueError(f"--grad-accum {grad_accum} does not divide {case.name}'s batch of {case.batch_size}")
    grad_accum = grad_accum or auto_grad_accum(case.batch_size, shape.seq_len,
                                               meshlib.batch_shards(rules, mesh, case.batch_size), jax.default_backend())
    hyper = optim.hyper_of(OptimizerConfig(lr=1e-3), ScheduleConfig(), 10_000)
    steps = build_steps(model_fns(spec), mesh, rules_key(rules), case.batch_size, grad_accum)
    return spec, mesh, grad_accum, steps, jax.device_put(hyper.as_input(), steps.hyper_sharding)


def bench_shape(case: BenchShape, precision: str = "fp32", grad_accum: int = 0, steps: int = 20,
                warmup: int = 3, attention: str = "auto") -> dict:
    """Compile time, then the median of `steps` timed steps (a device sync after each)."""
    shape = case.shape
    spec, mesh, grad_accum, fns, hyper = build_bench_steps(case, precision, grad_accum, attention)
    rng = np.random.default_rng(0)
    batch = jax.device_put(rng.integers(0, shape.vocab, (case.batch_size, shape.seq_len + 1), dtype=np.int32),
                           fns.batch_sharding)
    state = fns.init_state(0)
    t0 = time.perf_counter()
    state, metrics = fns.train_step(state, batch, hyper)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - t0
    for _ in range(warmup):
        state, metrics = fns.train_step(state, batch, hyper)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = fns.train_step(state, batch, hyper)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_seconds = statistics.median(times)
    tokens_per_second = case.batch_size * shape.seq_len / step_seconds
    fpt = ledger.flops_per_token(shape)
    peak, method = hardware.peak_flops(precision)
    return {
        "name": case.name, **dataclasses.asdict(shape), "batch_size": case.batch_size, "precision": precision,
        "attention": spec.attention, "grad_accum": grad_accum, "devices": jax.device_count(),
        "mesh": dict(mesh.shape), "params": ledger.non_embedding_params(shape),
        "params_total": ledger.total_params(shape),
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
    cfg = DataConfig(seq_len=seq_len, prefetch=4)
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

    from scalelab.config import compose_train
    from scalelab.train.run import run

    common = ["model=p150k", "data.seq_len=128", f"data.tokens={steps * 16 * 128}", "train.batch_size=16",
              "train.progress=false", "train.eval_tokens=2048"]
    variants = {"quiet": ["train.log_every=1000000", "checkpoint.every=0"],
                "logging+checkpoints": ["train.log_every=1", "checkpoint.every=100"]}
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            for name, extra in variants.items():
                summary = run(compose_train(common + extra), Path(tmp) / f"{name}-{i}")
                speeds[name].append(summary["tokens_per_second"])
    best = {name: max(values) for name, values in speeds.items()}
    return {"steps": steps, "rounds": speeds, "tokens_per_second": best,
            "overhead": best["quiet"] / best["logging+checkpoints"] - 1}
