"""The training and evaluation steps, jitted with explicit shardings over the mesh.

The train state is a plain pytree `{"step", "params", "opt_state"}` whose parameters are a nested
dict of arrays (string keys), so that optax, Orbax and the sharding rules all see the same tree.
`ModelFns` (scalelab/model/functional.py) turns that dict back into the NNX module inside the
traced function (free at run time); the loss is `scalelab.model.loss.next_token_loss`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax

from scalelab.config import ConfigError
from scalelab.model import hints
from scalelab.model.functional import ModelFns
from scalelab.model.loss import next_token_loss, training_loss
from scalelab.train import mesh as meshlib
from scalelab.train import optim


def loss_and_grads(fns: ModelFns, params: dict, batch_BxT1, grad_accum: int):
    """(metrics, gradient) of the whole batch, accumulated over `grad_accum` microbatches with scan;
    the metrics are `training_loss`'s (`train_loss` first), averaged over the microbatches.

    Microbatch i takes rows i, i + grad_accum, ... so that, with the batch split over devices,
    every microbatch keeps the same split and no row moves between devices.
    """
    grad_fn = jax.grad(partial(training_loss, fns), has_aux=True)
    if grad_accum == 1:
        grads, metrics = grad_fn(params, batch_BxT1)
        return metrics, grads
    B, T1 = batch_BxT1.shape
    micro_AxMxT1 = batch_BxT1.reshape(B // grad_accum, grad_accum, T1).swapaxes(0, 1)

    def accumulate(carry, micro_MxT1):
        metric_sum, grad_sum = carry
        grads, metrics = grad_fn(params, micro_MxT1)
        return (jax.tree.map(jnp.add, metric_sum, metrics), jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    metric_zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, micro_AxMxT1[0])[1])
    (metric_sum, grad_sum), _ = jax.lax.scan(accumulate, (metric_zeros, zeros), micro_AxMxT1)
    return (jax.tree.map(lambda m: m / grad_accum, metric_sum),
            jax.tree.map(lambda g: g / grad_accum, grad_sum))


# Tokens per microbatch and batch shard that keep a step's activations (attention scores above
# all) within a CPU's caches; much smaller microbatches lose to per-op overhead (NOTES.md).
CPU_MICROBATCH_TOKENS = 1024


def auto_grad_accum(batch_size: int, seq_len: int, batch_shards: int, platform: str) -> int:
    """`train.grad_accum=0`: on CPUs, the most microbatches that still give each batch shard at least
    CPU_MICROBATCH_TOKENS tokens (and a whole number of rows); elsewhere, 1."""
    if platform != "cpu":
        return 1
    best = 1
    for accum in range(1, batch_size + 1):
        rows = batch_size // accum
        if batch_size % accum or rows % batch_shards:
            continue
        if rows // batch_shards * seq_len >= CPU_MICROBATCH_TOKENS or accum == 1:
            best = accum
    return best


BATCH_AXES = ("data", "fsdp", "expert")  # the mesh axes shard_map splits the batch over


def shard_map_loss_and_grads(fns: ModelFns, mesh, param_specs, batch_spec, grad_accum: int):
    """Data-, FSDP- and expert-parallel loss and gradients, with every collective written out.

    Each device holds its FSDP shard of every parameter, its share of the experts (an `expert` axis)
    and its rows of the batch. It all-gathers the parameters over `fsdp` and runs forward and backward
    on its rows; an MoE layer sends its tokens' slots to their experts' devices and back by
    all-to-all (scalelab/model/hints.py), whose transpose brings each expert the gradient of every
    token it served. Each gradient is then reduce-scattered back to its shard over `fsdp` and summed
    over the batch axes its parameter is not split over. The result is the mean gradient of the
    global batch, sharded like the parameters.
    """
    from jax.sharding import PartitionSpec as P

    n_shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    expert_axis = "expert" if mesh.shape["expert"] > 1 else None

    def fsdp_dim(spec) -> int | None:
        for dim, entry in enumerate(spec):
            if "fsdp" in meshlib.mesh_axes_of(entry):
                return dim
        return None

    def split_over(spec) -> set:
        return {a for entry in spec for a in meshlib.mesh_axes_of(entry)}

    def gather(p, spec):
        dim = fsdp_dim(spec)
        return p if dim is None else jax.lax.all_gather(p, "fsdp", axis=dim, tiled=True)

    def reduce(g, spec):
        dim = fsdp_dim(spec)
        if dim is not None:
            g = jax.lax.psum_scatter(g, "fsdp", scatter_dimension=dim, tiled=True)
        rest = tuple(a for a in BATCH_AXES if a not in split_over(spec))
        return (jax.lax.psum(g, rest) if rest else g) / n_shards

    def as_local(p):
        # Mark the gathered copy as per-device, so that autodiff returns this device's own gradient
        # (shard_map would otherwise sum gradients of replicated inputs implicitly) and the
        # reductions below are the only ones.
        aval = jax.typeof(p)
        varying = aval.vma if hasattr(aval, "vma") else aval.manual_axis_type.varying
        missing = tuple(a for a in BATCH_AXES if a not in varying)
        return jax.lax.pcast(p, missing, to="varying") if missing else p

    def local(params, batch_BxT1):
        full = jax.tree.map(lambda p, spec: as_local(gather(p, spec)), params, param_specs)
        with hints.device_collectives(expert_axis, BATCH_AXES):
            metrics, grads = loss_and_grads(fns, full, batch_BxT1, grad_accum)
        grads = jax.tree.map(reduce, grads, param_specs)
        return jax.tree.map(lambda m: jax.lax.pmean(m, BATCH_AXES), metrics), grads

    return jax.shard_map(local, mesh=mesh, in_specs=(param_specs, batch_spec), out_specs=(P(), param_specs))


@dataclass
class Steps:
    """The compiled-on-first-call functions of one step program, with the shardings they were built for.

    Every run-specific number (learning-rate schedule, weight decay, clipping, Adam's betas) is the
    `hyper` input of `train_step`, so one `Steps` serves every run of its shape: `build_steps`
    caches them, and runs of one sweep share one compilation.
    """

    fns: ModelFns
    mesh: Any
    state_shardings: Any
    batch_sharding: Any
    hyper_sharding: Any
    init_state: Any  # (seed) -> state, jitted with out_shardings
    train_step: Any  # (state, batch, hyper) -> (state, metrics), state donated
    eval_step: Any  # (params, batch) -> loss


def _grads_fn(fns: ModelFns, mesh, param_sh, batch_size: int, grad_accum: int, impl: str):
    if impl != "shard_map":
        return partial(loss_and_grads, fns, grad_accum=grad_accum)
    if mesh.shape["tensor"] > 1:
        raise ConfigError("mesh.impl", "shard_map writes out data, FSDP and expert parallelism only; set "
                                       "mesh.tensor=1 or use mesh.impl=jit for tensor parallelism")
    if mesh.shape["expert"] > 1 and fns.spec.moe_dispatch == "dropless":
        raise ConfigError("model.moe.dispatch", "dropless experts are not split over devices by mesh.impl=shard_map; "
                                                "use dispatch=capacity, mesh.expert=1 or mesh.impl=jit")
    param_specs = jax.tree.map(lambda s: s.spec, param_sh)
    if batch_size // grad_accum // math.prod(mesh.shape[a] for a in BATCH_AXES) < 1:
        raise ConfigError("train.grad_accum", "each device needs at least one row per microbatch")
    # name every batch axis even when one has size 1, so every device's loss "varies" over all of them
    batch_spec = jax.sharding.PartitionSpec(BATCH_AXES)
    return shard_map_loss_and_grads(fns, mesh, param_specs, batch_spec, grad_accum)


def hinted(fn, mesh, rules: dict):
    """`fn` traced with the model's activation hints (scalelab/model/hints.py) resolved on `mesh`
    through `rules`; only a mesh with an expert axis needs them (the MoE all-to-all)."""
    if mesh.shape.get("expert", 1) == 1:
        return fn
    resolve = lambda axes: jax.sharding.NamedSharding(mesh, meshlib.logical_to_spec(axes, rules, mesh))

    def traced(*args):
        with hints.activation_shardings(resolve):
            return fn(*args)
    return traced


def one_step(grads_fn, state, batch, hyper: optim.Hyper, lr_multipliers=None, optimizer: str = "adamw",
             muon_dims=None):
    """The update of one run: loss and gradients, then the optimizer (`optim.update`: adamw, or muon
    on the matrices of `muon_dims`) at the schedule's learning rate (times each parameter's
    multiplier from the model's parametrization, when it has them)."""
    metrics, grads = grads_fn(state["params"], batch)
    params, opt_state, lr = optim.update(state["params"], grads, state["opt_state"], state["step"], hyper,
                                         lr_multipliers, optimizer, muon_dims)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
    return new_state, {**metrics, "grad_norm": optax.tree.norm(grads), "lr": lr}


def _update_args(fns: ModelFns, optimizer: str) -> dict:
    """`one_step`'s static optimizer arguments for a model and `optimizer.name`."""
    return {"lr_multipliers": fns.lr_multipliers, "optimizer": optimizer,
            "muon_dims": optim.muon_dims(fns.logical_axes) if optimizer == "muon" else None}


def stacked_sharding(sharding, members: int):
    """A sharding with a leading (replicated) member axis in front of `sharding`'s spec."""
    if not members:
        return sharding
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None, *sharding.spec))


@functools.lru_cache(maxsize=32)
def build_steps(fns: ModelFns, mesh, rules_items: tuple, batch_size: int, grad_accum: int,
                impl: str = "jit", optimizer: str = "adamw") -> Steps:
    """The jitted steps of one shape and optimizer (`optimizer.name`; cached: runs of a sweep share them).

    impl=jit lets GSPMD place the collectives; impl=shard_map writes them out. Packed groups use
    `build_packed_chunk_step` or `build_member_parallel_step` instead of `train_step`.
    """
    rules = dict(rules_items)
    param_sh = meshlib.param_shardings(fns.logical_axes, fns.shapes, rules, mesh)
    batch_sh = meshlib.batch_sharding(rules, mesh, batch_size)
    if grad_accum > 1:
        meshlib.batch_sharding(rules, mesh, batch_size // grad_accum, "train.grad_accum")  # microbatches split too
    replicated = meshlib.replicated(mesh)
    moments = optim.moments(optimizer, optim.muon_dims(fns.logical_axes))

    def init_state(seed):
        params = fns.init(seed)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": moments.init(params)}

    abstract = jax.eval_shape(init_state, 0)
    # optimizer moments mirror their parameter's sharding; scalars (counts) are replicated
    state_sh = {"step": replicated, "params": param_sh,
                "opt_state": optim.per_param_state(abstract["opt_state"], param_sh, replicated)}
    step_fn = partial(one_step, _grads_fn(fns, mesh, param_sh, batch_size, grad_accum, impl),
                      **_update_args(fns, optimizer))
    if impl == "jit":
        step_fn = hinted(step_fn, mesh, rules)
    train_step = jax.jit(step_fn, in_shardings=(state_sh, batch_sh, replicated), out_shardings=(state_sh, replicated),
                         donate_argnums=0)
    eval_step = jax.jit(hinted(partial(next_token_loss, fns), mesh, rules), in_shardings=(param_sh, batch_sh), out_shardings=replicated)
    return Steps(fns=fns, mesh=mesh, state_shardings=state_sh, batch_sharding=batch_sh, hyper_sharding=replicated,
                 init_state=jax.jit(init_state, out_shardings=state_sh), train_step=train_step,
                 eval_step=eval_step)


def steps_of_one_run(step_fn):
    """K steps of one run in one call: (state, batches_KxBxT1, active_K, hyper) -> (state, metrics_K).

    A `lax.scan` over K batches; a step whose `active` flag is off leaves the state as it was (its
    metrics are computed and ignored), so a member can stop mid-call at an eval, a checkpoint or its
    last step while its siblings go on. Every step runs the same loop body, so a run's numbers do not
    depend on where the calls' boundaries fall."""
    def chunk(state, batches_KxBxT1, active_K, hyper):
        def body(carry, xs):
            batch_BxT1, active = xs
            new, metrics = step_fn(carry, batch_BxT1, hyper)
            return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, carry), metrics
        return jax.lax.scan(body, state, (batches_KxBxT1, active_K))
    return chunk


@functools.lru_cache(maxsize=32)
def build_packed_chunk_step(fns: ModelFns, mesh, rules_items: tuple, batch_size: int, grad_accum: int,
                            members: int, optimizer: str = "adamw"):
    """Packed members each sharded over `mesh` as a single run would be (the member axis replicated),
    K steps per call: (state_M, batches_MxKxBxT1, active_MxK, hyper_M) -> (state_M, metrics_MxK)."""
    steps = build_steps(fns, mesh, rules_items, batch_size, grad_accum, "jit", optimizer)
    step_fn = partial(one_step, _grads_fn(fns, mesh, steps.state_shardings["params"], batch_size, grad_accum, "jit"),
                      **_update_args(fns, optimizer))
    step_fn = hinted(step_fn, mesh, dict(rules_items))
    stacked_state = jax.tree.map(lambda s: stacked_sharding(s, members), steps.state_shardings)
    batches = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, None, *steps.batch_sharding.spec))
    per_member = stacked_sharding(steps.hyper_sharding, members)
    return jax.jit(jax.vmap(steps_of_one_run(step_fn)), in_shardings=(stacked_state, batches, per_member, per_member),
                   out_shardings=(stacked_state, per_member), donate_argnums=0)


@functools.lru_cache(maxsize=32)
def build_member_parallel_step(fns: ModelFns, member_mesh, grad_accum: int, optimizer: str = "adamw"):
    """The train step of runs stacked along a leading member axis that is split over every device
    of `member_mesh` (axis `data`): each device trains its own members, with no collective at all,
    K steps per call (the signature of `steps_of_one_run`, with a leading member axis).

    This is the fastest layout for models small enough that one device holds a whole run (each
    core of a CPU, each GPU of a host); the member count must divide over the devices.
    """
    step_fn = partial(one_step, partial(loss_and_grads, fns, grad_accum=grad_accum), **_update_args(fns, optimizer))
    spread = jax.sharding.NamedSharding(member_mesh, jax.sharding.PartitionSpec("data"))
    return jax.jit(jax.vmap(steps_of_one_run(step_fn)), in_shardings=(spread,) * 4, out_shardings=(spread, spread),
                   donate_argnums=0)


def rules_key(rules: dict) -> tuple:
    """`mesh.rules` as a hashable key for the `build_steps` cache."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in rules.items()))
