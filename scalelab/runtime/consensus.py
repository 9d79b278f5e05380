"""Decisions every process of a multi-process run must take alike, from values only some have seen.

One small integer per process, reduced to its maximum over all processes by a jitted collective
over every device (each device of a process contributes that process's value). `dispatch_max`
returns at once (the collective runs asynchronously, queued behind the work already dispatched);
`read` waits for it. With one process nothing is dispatched and the value is its own.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@functools.lru_cache(maxsize=1)
def _reducer():
    mesh = Mesh(np.asarray(jax.devices()), ("processes",))
    sharding = NamedSharding(mesh, PartitionSpec("processes"))
    reduce = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))
    return sharding, reduce


def dispatch_max(value: int):
    """The maximum of `value` over all processes, as a handle for `read` (every process must call it)."""
    if jax.process_count() == 1:
        return int(value)
    sharding, reduce = _reducer()
    shards = [jax.device_put(np.full((1,), value, np.int32), d) for d in sharding.addressable_devices]
    votes = jax.make_array_from_single_device_arrays((jax.device_count(),), sharding, shards)
    return reduce(votes)


def read(handle) -> int:
    if isinstance(handle, int):
        return handle
    return int(np.asarray(handle.addressable_data(0)))


def max_over_processes(value: int) -> int:
    return read(dispatch_max(value))


def any_process(flag: bool) -> bool:
    return bool(max_over_processes(int(flag)))
