"""The training and evaluation steps, jitted with explicit shardings over the mesh.

The train state is a plain pytree `{"step", "params", "opt_state"}` whose parameters are a nested
dict of arrays (string keys), so that optax, Orbax and the sharding rules all see the same tree.
`ModelFns` turns that dict back into the NNX module inside the traced function (free at run time).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from scalelab import mesh as meshlib
from scalelab.model import ModelSpec, Transformer


def _str_keys(tree):
    if isinstance(tree, dict):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _int_keys(tree):
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
    return tree


class ModelFns:
    """The model as pure functions of a parameter dict: init, apply, and its logical axes."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        abstract = nnx.eval_shape(lambda: Transformer(spec, nnx.Rngs(0)))
        self.graphdef, self._abstract_state = nnx.split(abstract)
        is_var = lambda x: isinstance(x, nnx.Variable)
        axes = jax.tree.map(lambda v: tuple(v.get_metadata()["logical_axes"]), self._abstract_state, is_leaf=is_var)
        self.logical_axes = _str_keys(nnx.to_pure_dict(axes))
        self.shapes = _str_keys(nnx.to_pure_dict(jax.tree.map(lambda v: tuple(v.get_value().shape), self._abstract_state, is_leaf=is_var)))

    def init(self, seed) -> dict:
        key = seed if jax.dtypes.issubdtype(jnp.asarray(seed).dtype, jax.dtypes.prng_key) else jax.random.key(seed)
        model = Transformer(self.spec, nnx.Rngs(params=key))
        return _str_keys(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

    def module(self, params: dict) -> Transformer:
        state = jax.tree.map(lambda x: x, self._abstract_state)
        nnx.replace_by_pure_dict(state, _int_keys(params))
        return nnx.merge(self.graphdef, state)

    def apply(self, params: dict, tokens_BxT, positions_BxT=None):
        return self.module(params)(tokens_BxT, positions_BxT)


def next_token_loss(fns: ModelFns, params: dict, batch_BxT1) -> jax.Array:
    """Mean cross-entropy (nats per token) of predicting batch[:, 1:] from batch[:, :-1]."""
    inputs_BxT, targets_BxT = batch_BxT1[:, :-1], batch_BxT1[:, 1:]
    logits_BxTxV = fns.apply(params, inputs_BxT).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT).mean()


def loss_and_grads(fns: ModelFns, params: dict, batch_BxT1, grad_accum: int):
    """Loss and gradient of the whole batch, accumulated over `grad_accum` microbatches with scan.

    Microbatch i takes rows i, i + grad_accum, ... so that, with the batch split over devices,
    every microbatch keeps the same split and no row moves between devices.
    """
    grad_fn = jax.value_and_grad(partial(next_token_loss, fns))
    if grad_accum == 1:
        return grad_fn(params, batch_BxT1)
    B, T1 = batch_BxT1.shape
    micro_AxMxT1 = batch_BxT1.reshape(B // grad_accum, grad_accum, T1).swapaxes(0, 1)

    def accumulate(carry, micro_MxT1):
        loss_sum, grad_sum = carry
        loss, grads = grad_fn(params, micro_MxT1)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss_sum, grad_sum), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros), micro_AxMxT1)
    return loss_sum / grad_accum, jax.tree.map(lambda g: g / grad_accum, grad_sum)


@dataclass
class Steps:
    """The compiled-on-first-call functions of one run, with the shardings they were built for."""

    fns: ModelFns
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: Any
    state_shardings: Any
    batch_sharding: Any
    init_state: Any  # (seed) -> state, jitted with out_shardings
    train_step: Any  # (state, batch) -> (state, metrics), state donated
    eval_step: Any  # (params, batch) -> loss


def build_steps(fns: ModelFns, optimizer, schedule, mesh, rules, batch_size: int, grad_accum: int) -> Steps:
    param_sh = meshlib.param_shardings(fns.logical_axes, fns.shapes, rules, mesh)
    batch_sh = meshlib.batch_sharding(rules, mesh, batch_size)
    if grad_accum > 1:
        meshlib.batch_sharding(rules, mesh, batch_size // grad_accum, "train.grad_accum")  # microbatches split too
    replicated = meshlib.replicated(mesh)

    def init_state(seed):
        params = fns.init(seed)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}

    abstract = jax.eval_shape(init_state, 0)
    # optimizer moments mirror their parameter's sharding; scalars (counts) are replicated
    state_sh = {
        "step": replicated,
        "params": param_sh,
        "opt_state": optax.tree_map_params(optimizer, lambda _, s: s, abstract["opt_state"], param_sh,
                                           transform_non_params=lambda _: replicated),
    }

    def train_step(state, batch):
        params = state["params"]
        loss, grads = loss_and_grads(fns, params, batch, grad_accum)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates), "opt_state": opt_state}
        metrics = {"train_loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"])}
        return new_state, metrics

    def eval_step(params, batch):
        return next_token_loss(fns, params, batch)

    return Steps(
        fns=fns, optimizer=optimizer, schedule=schedule, mesh=mesh, state_shardings=state_sh,
        batch_sharding=batch_sh,
        init_state=jax.jit(init_state, out_shardings=state_sh),
        train_step=jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated),
                           donate_argnums=0),
        eval_step=jax.jit(eval_step, in_shardings=(param_sh, batch_sh), out_shardings=replicated),
    )
