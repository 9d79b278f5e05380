"""The optimizers (`optimizer.name`: adamw | muon) with global-norm clipping, no weight decay on
norms, and the learning-rate schedules.

Every number of a run's optimizer and schedule is an input of the compiled train step (a `Hyper`),
not a constant in it: runs that differ only in length, learning rate, warmup, weight decay,
clipping, Adam's betas or schedule kind share one compiled program (and JAX's persistent
compilation cache serves a whole sweep), and a packed sweep stacks their `Hyper`s along a member
axis to train them as one vmapped program.

* cosine:   linear warmup to the peak, cosine decay to final_lr_ratio * peak at the last step;
* wsd:      warmup, a stable plateau at the peak, and a linear decay to final_lr_ratio * peak over
            the last `schedule.decay` fraction of steps (warmup-stable-decay);
* constant: warmup, then the peak.

Muon (`optimizer=muon`, Jordan et al. 2024, as in optax.contrib) updates the hidden matrices (the
attention and MLP projections: every parameter with an `embed` axis and no `vocab` axis) with the
Newton-Schulz orthogonalized Nesterov momentum of their gradients; the embeddings, the output
layer and the norm scales keep AdamW. Its learning rate: one peak `optimizer.lr` and one schedule
for both parts, with each matrix's orthogonalized update scaled by
`optimizer.muon_rms * sqrt(max(fan_in, fan_out))` (the "consistent RMS" scaling of Liu et al. 2025,
optax's `consistent_rms`). An orthogonalized m x n update has RMS 1/sqrt(max(m, n)), so the scaled
one has RMS `muon_rms` whatever the matrix's shape; 0.2 is about the RMS of an AdamW update. The
peak lr, the warmup and the decoupled weight decay therefore mean the same under both optimizers
(a lr law fitted for AdamW is a starting point for Muon, and one lr serves the matrices and the
AdamW parameters of a run), and `optimizer.muon_rms` is the one extra knob: Muon's step relative
to AdamW's (experiments/adamw_vs_muon/: on the quickstart's models, under the AdamW lr law, the
best `muon_rms` was 0.26 to 0.5). Muon's numbers are `Hyper` inputs like AdamW's; only the choice
of optimizer shapes the program (the train state differs: Muon keeps one momentum per matrix, no
second moment). The direction is optax.contrib's `scale_by_muon` (momentum and Newton-Schulz),
built inside the traced step from `Hyper`; optax's `muon` alias is not used because it fixes the
lr at construction and gives the rest a Nesterov Adam, where scalelab applies the schedule's lr
and the weight decay itself, as for AdamW.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon

SCHEDULE_KINDS = ("cosine", "wsd", "constant")


def warmup_steps(schedule_cfg, total_steps: int) -> int:
    w = schedule_cfg.warmup
    return min(int(round(w * total_steps)) if w < 1 else int(w), total_steps)


class Schedule(NamedTuple):
    """The numbers of one run's learning-rate schedule (float32 scalars)."""

    peak: np.float32
    warmup: np.float32  # steps
    total: np.float32  # steps
    decay_start: np.float32  # the step where WSD's decay begins (= total for other schedules)
    final: np.float32  # lr at the end of the decay
    kind: np.float32  # index into SCHEDULE_KINDS


class Hyper(NamedTuple):
    """A run's schedule and optimizer numbers: the per-run input of the train step."""

    schedule: Schedule
    weight_decay: np.float32
    clip: np.float32  # global-norm clip; 0 disables
    b1: np.float32
    b2: np.float32
    eps: np.float32
    muon_momentum: np.float32 = np.float32(0.95)  # muon: Nesterov momentum of the matrices' gradients
    muon_rms: np.float32 = np.float32(0.2)  # muon: the RMS of a matrix's update before the lr

    def as_input(self) -> Hyper:
        return jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), self)


def schedule_values(schedule_cfg, peak_lr: float, total_steps: int) -> Schedule:
    """The schedule of one run of `total_steps` steps peaking at `peak_lr`."""
    warm = warmup_steps(schedule_cfg, total_steps)
    decay_start = total_steps
    if schedule_cfg.name == "wsd":
        decay_start = total_steps - int(round(schedule_cfg.decay * total_steps))
    final = peak_lr * schedule_cfg.final_lr_ratio
    kind = SCHEDULE_KINDS.index(schedule_cfg.name)
    return Schedule(*(np.float32(v) for v in (peak_lr, warm, total_steps, decay_start, final, kind)))


def hyper_of(opt_cfg, schedule_cfg, total_steps: int) -> Hyper:
    """The `Hyper` of a run's `optimizer` and `schedule` configs."""
    return Hyper(schedule_values(schedule_cfg, opt_cfg.lr, total_steps),
                 *(np.float32(getattr(opt_cfg, k)) for k in ("weight_decay", "clip", "b1", "b2", "eps", "muon_momentum",
                                                     "muon_rms")))


def learning_rate(step, sched: Schedule):
    """The learning rate at `step` (0-based) of schedule `sched` (every kind computed, one chosen)."""
    peak, warm, total, decay_start, final, kind = sched
    s = jnp.asarray(step, jnp.float32)
    ramp = peak * (s + 1) / jnp.maximum(warm, 1)
    cos_progress = jnp.clip((s - warm) / jnp.maximum(total - warm, 1), 0, 1)
    cosine = final + (peak - final) * 0.5 * (1 + jnp.cos(jnp.pi * cos_progress))
    wsd_progress = jnp.clip((s - decay_start) / jnp.maximum(total - decay_start, 1), 0, 1)
    wsd = peak + (final - peak) * wsd_progress
    after = jnp.select([kind == 0, kind == 1], [cosine, wsd], peak)
    return jnp.where(s < warm, ramp, after)


def decay_mask(params):
    """True for matrices (weight decay), False for vectors such as norm scales and biases."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def _is_axes(x) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def _is_dims(x) -> bool:
    return x is None or isinstance(x, MuonDimensionNumbers)


def muon_dims(logical_axes):
    """Which parameters Muon updates, from their logical axes: a hidden matrix (an `embed` axis and
    no `vocab` axis) gets the `MuonDimensionNumbers` that make it one matrix of the model width by
    its other axes (wq: embed x heads*head_dim, wo: heads*head_dim x embed, w_up: embed x mlp);
    embeddings, the output layer and norm scales get None (AdamW). An MoE layer's experts
    (expert x embed x mlp) are one matrix per expert."""
    def dims(axes):
        if len(axes) < 2 or "embed" not in axes or "vocab" in axes:
            return None
        width = axes.index("embed")
        # an MoE layer's expert axis is a batch of matrices: neither reduced nor output
        rest = tuple(i for i in range(len(axes)) if i != width and axes[i] != "expert")
        if width < min(rest):  # the model width is the input side
            return MuonDimensionNumbers(reduction_axis=(width,), output_axis=rest)
        return MuonDimensionNumbers(reduction_axis=rest, output_axis=(width,))
    return jax.tree.map(dims, logical_axes, is_leaf=_is_axes)


def moments(name: str = "adamw", dims=None, hyper: Hyper | None = None) -> optax.GradientTransformation:
    """The optimizer state's transform, its numbers from `hyper` (None: optax's defaults, which is
    all that making the state needs): Adam's moments (adamw); Muon's momentum for the matrices of
    `dims` (`muon_dims`) and Adam's moments for the rest (muon)."""
    h = {} if hyper is None else {"b1": hyper.b1, "b2": hyper.b2, "eps": hyper.eps}
    adam = optax.scale_by_adam(**h)
    if name == "adamw":
        return adam
    labels = jax.tree.map(lambda d: "adam" if d is None else "muon", dims, is_leaf=_is_dims)
    masked = jax.tree.map(lambda d: optax.MaskedNode() if d is None else d, dims, is_leaf=_is_dims)
    muon = {} if hyper is None else {"beta": hyper.muon_momentum, "eps": hyper.eps}
    return optax.partition({"muon": scale_by_muon(**muon, weight_dimension_numbers=masked), "adam": adam}, labels)


def scale_to_rms(direction, dims, rms):
    """Each Muon matrix's orthogonalized direction times rms * sqrt(max(fan_in, fan_out)): RMS `rms`
    whatever its shape (optax's `consistent_rms`); AdamW's directions unchanged."""
    def scale(d, u):
        if d is None:
            return u
        fan_in, fan_out = (math.prod(u.shape[a] for a in axes) for axes in (d.reduction_axis, d.output_axis))
        return u * (rms * math.sqrt(max(fan_in, fan_out))).astype(u.dtype)
    return jax.tree.map(scale, dims, direction, is_leaf=_is_dims)


def per_param_state(opt_state, per_param, other):
    """A tree like `opt_state` whose leaves that copy a parameter (their path ends in the parameter's
    path) take that parameter's entry of `per_param` (its sharding, say), the rest (counts,
    Newton-Schulz coefficients) `other`. optax.tree_map_params does this for one transform, not
    through optax.partition's masked states."""
    by_path = {tuple(path): v for path, v in jax.tree_util.tree_flatten_with_path(per_param)[0]}

    def pick(path, _leaf):
        return next((by_path[tuple(path[k:])] for k in range(len(path)) if tuple(path[k:]) in by_path), other)
    return jax.tree_util.tree_map_with_path(pick, opt_state)


def scale_by_lr_multipliers(multipliers) -> optax.GradientTransformation:
    """Each parameter's update times its learning-rate multiplier (`multipliers`: a tree of floats
    like the parameters, e.g. mup's per-group scales from `ModelFns.lr_multipliers`).

    Stateless, and the multipliers are constants of the step: nothing to shard (FSDP, tensor
    parallelism) and nothing to stack (packed members share their model, hence their multipliers)."""
    return optax.stateless(lambda updates, _params: jax.tree.map(lambda u, m: u * m, updates, multipliers))


def update(params, grads, opt_state, step, hyper: Hyper, lr_multipliers=None, name: str = "adamw", dims=None):
    """One step of optimizer `name` (adamw | muon; `dims`: `muon_dims` of the parameters) at the
    schedule's learning rate: (new params, new opt state, lr).

    Both clip the global gradient norm, then take the direction (Adam's; or, under muon, the
    matrices' orthogonalized momentum scaled to RMS `hyper.muon_rms`), add decoupled weight decay
    to the matrices and step by the lr. `lr_multipliers` (None: one learning rate for all) scales
    each parameter's step, weight decay included, as a per-parameter-group learning rate would."""
    g_norm = optax.tree.norm(grads)
    scale = jnp.where((hyper.clip > 0) & (g_norm > hyper.clip), hyper.clip / g_norm, 1.0)
    grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
    direction, opt_state = moments(name, dims, hyper).update(grads, opt_state, params)
    if name == "muon":
        direction = scale_to_rms(direction, dims, hyper.muon_rms)
    lr = learning_rate(step, hyper.schedule)

    def apply(p, u, decays):
        u = u + hyper.weight_decay * p if decays else u
        return (p - lr * u).astype(p.dtype)

    if lr_multipliers is None:
        new_params = jax.tree.map(apply, params, direction, decay_mask(params))
        return new_params, opt_state, lr
    decayed = jax.tree.map(lambda p, u, decays: u + hyper.weight_decay * p if decays else u,
                           params, direction, decay_mask(params))
    scaled, _ = scale_by_lr_multipliers(lr_multipliers).update(decayed, optax.EmptyState(), params)
    new_params = jax.tree.map(lambda p, u: (p - lr * u).astype(p.dtype), params, scaled)
    return new_params, opt_state, lr


def adamw_update(params, grads, opt_state, step, hyper: Hyper, lr_multipliers=None):
    """One AdamW step (`update` with name=adamw)."""
    return update(params, grads, opt_state, step, hyper, lr_multipliers)
