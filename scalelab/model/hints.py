"""Sharding hints for activations, in logical axis names, so that the model never names a mesh axis.

The training step (scalelab/train/step.py) traces the model inside `activation_shardings(resolve)`,
with `resolve` turning logical axes into a sharding of its mesh; outside it (evaluation,
generation, tests, shard_map) `constrain` does nothing. The MoE layer uses it to move its tokens
to the devices that hold their experts (an all-to-all) and back.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

_RESOLVE: contextvars.ContextVar = contextvars.ContextVar("scalelab_activation_shardings", default=None)


@contextlib.contextmanager
def activation_shardings(resolve):
    token = _RESOLVE.set(resolve)
    try:
        yield
    finally:
        _RESOLVE.reset(token)


def constrain(x, logical_axes: tuple):
    resolve = _RESOLVE.get()
    return x if resolve is None else jax.lax.with_sharding_constraint(x, resolve(logical_axes))
