"""How activations move between devices, in logical names, so that the model never names a mesh axis.

One way per step implementation (scalelab/train/step.py):

* **jit**: the step traces the model inside `activation_shardings(resolve)`, `resolve` turning
  logical axes into a sharding of its mesh; `constrain` pins an activation there and GSPMD places
  the collectives (the MoE exchange comes out as an all-to-all).
* **shard_map**: the step traces the model once per device inside `device_collectives(expert, batch)`;
  the MoE exchange is written out as `jax.lax.all_to_all` over the expert axis, and `batch_sum`
  adds a statistic over the devices that hold the batch's other rows, so that router statistics
  (and the losses made of them) are the whole batch's, as on one device.

Outside both (evaluation, generation, tests) every function here is the identity. The MoE layer
calls `to_experts` and `from_experts` around its experts and `batch_sum` for its statistics.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import jax

_RESOLVE: contextvars.ContextVar = contextvars.ContextVar("scalelab_activation_shardings", default=None)
_COLLECTIVES: contextvars.ContextVar = contextvars.ContextVar("scalelab_device_collectives", default=None)


@dataclass(frozen=True)
class DeviceAxes:
    expert: str | None  # the mesh axis the experts are split over (None: every device holds them all)
    batch: tuple[str, ...]  # the mesh axes the batch's rows are split over


@contextlib.contextmanager
def _set(var: contextvars.ContextVar, value):
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def activation_shardings(resolve):
    """jit: `constrain` pins activations to `resolve(logical_axes)`."""
    return _set(_RESOLVE, resolve)


def device_collectives(expert: str | None, batch: tuple[str, ...]):
    """shard_map: the model's exchanges and batch statistics become collectives over these mesh axes."""
    return _set(_COLLECTIVES, DeviceAxes(expert, tuple(batch)))


def constrain(x, logical_axes: tuple):
    resolve = _RESOLVE.get()
    return x if resolve is None else jax.lax.with_sharding_constraint(x, resolve(logical_axes))


def to_experts(x_BxExCxD):
    """Each sequence's expert slots sent to the devices that hold their experts.

    Under shard_map with X devices on the expert axis, this device's B rows of slots for all E
    experts become the slots of its E/X experts from every device of its expert group:
    BxExCxD -> (X*B)x(E/X)xCxD, the rows ordered by the device they came from."""
    axes = _COLLECTIVES.get()
    if axes is not None and axes.expert is not None:
        return jax.lax.all_to_all(x_BxExCxD, axes.expert, split_axis=1, concat_axis=0, tiled=True)
    return constrain(x_BxExCxD, ("expert_batch", "expert", None, None))


def from_experts(y_BxExCxD):
    """The experts' outputs sent back to the devices of their tokens: the inverse of `to_experts`."""
    axes = _COLLECTIVES.get()
    if axes is not None and axes.expert is not None:
        return jax.lax.all_to_all(y_BxExCxD, axes.expert, split_axis=0, concat_axis=1, tiled=True)
    return constrain(y_BxExCxD, ("expert_batch", "expert", None, None))


def batch_sum(x):
    """`x` summed over the devices holding the batch's other rows (shard_map); elsewhere `x` itself."""
    axes = _COLLECTIVES.get()
    return x if axes is None else jax.lax.psum(x, axes.batch)
