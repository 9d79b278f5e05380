"""Peak FLOP/s for MFU: a table for accelerators, a measurement for CPUs.

MFU = model FLOP/s (ledger FLOPs per token x tokens/s) / peak FLOP/s of the devices used.
Accelerator peaks are the vendors' dense (no sparsity) figures per chip. A CPU has no honest
datasheet number for XLA, so its peak is measured in the same process: the best of a few runs of a
jitted 2048^3 matmul in the compute dtype on the first device.
"""

from __future__ import annotations

import time
from functools import cache

import jax
import jax.numpy as jnp

# device_kind substring -> peak FLOP/s per chip: (bf16 dense, fp32)
PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "TPU v4": (275e12, 275e12 / 2),
    "TPU v5 lite": (197e12, 197e12 / 2),
    "TPU v5e": (197e12, 197e12 / 2),
    "TPU v5p": (459e12, 459e12 / 2),
    "TPU v5": (459e12, 459e12 / 2),
    "TPU v6 lite": (918e12, 918e12 / 2),
    "TPU v6e": (918e12, 918e12 / 2),
}


def table_peak(device_kind: str, precision: str) -> float | None:
    for key, (bf16, fp32) in PEAKS.items():
        if key.lower() in device_kind.lower():
            return bf16 if precision == "bf16" else fp32
    return None


@cache
def measured_matmul_peak(precision: str = "fp32", n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` jitted n^3 matmuls on the first device."""
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(precision: str = "fp32") -> tuple[float, str]:
    """Peak FLOP/s of all devices together, and how it was obtained."""
    devices = jax.devices()
    kind = devices[0].device_kind
    per_chip = table_peak(kind, precision)
    if per_chip is not None:
        return per_chip * len(devices), f"datasheet peak of {len(devices)} x {kind} ({precision})"
    # host devices share the same cores, so the measured peak is for all of them together
    return measured_matmul_peak(precision), f"measured 2048^3 {precision} matmul on {devices[0].platform}"
