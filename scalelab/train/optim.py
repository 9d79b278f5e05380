"""AdamW with global-norm clipping, no weight decay on norms, and the learning-rate schedules.

Every number of a run's optimizer and schedule is an input of the compiled train step (a `Hyper`),
not a constant in it: runs that differ only in length, learning rate, warmup, weight decay,
clipping, Adam's betas or schedule kind share one compiled program (and JAX's persistent
compilation cache serves a whole sweep), and a packed sweep stacks their `Hyper`s along a member
axis to train them as one vmapped program.

* cosine:   linear warmup to the peak, cosine decay to final_lr_ratio * peak at the last step;
* wsd:      warmup, a stable plateau at the peak, and a linear decay to final_lr_ratio * peak over
            the last `schedule.decay` fraction of steps (warmup-stable-decay);
* constant: warmup, then the peak.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

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

    def as_input(self) -> Hyper:
        return jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), self)


def schedule_values(schedule_cfg, peak_lr: float, total_steps: int) -> Schedule:
    """The schedule of one run of `total_steps` steps peaking at `peak_lr`."""
    warm = warmup_steps(schedule_cfg, total_steps)
    decay_start = total_steps - int(round(schedule_cfg.decay * total_steps)) if schedule_cfg.name == "wsd" \
        else total_steps
    final = peak_lr * schedule_cfg.final_lr_ratio
    kind = SCHEDULE_KINDS.index(schedule_cfg.name)
    return Schedule(*(np.float32(v) for v in (peak_lr, warm, total_steps, decay_start, final, kind)))


def hyper_of(opt_cfg, schedule_cfg, total_steps: int) -> Hyper:
    """The `Hyper` of a run's `optimizer` and `schedule` configs."""
    return Hyper(schedule_values(schedule_cfg, opt_cfg.lr, total_steps),
                 *(np.float32(opt_cfg[k]) for k in ("weight_decay", "clip", "b1", "b2", "eps")))


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


def moments() -> optax.GradientTransformation:
    """The optimizer state's transform (Adam's moments); its numbers come from `Hyper` at each step."""
    return optax.scale_by_adam()


def scale_by_lr_multipliers(multipliers) -> optax.GradientTransformation:
    """Each parameter's update times its learning-rate multiplier (`multipliers`: a tree of floats
    like the parameters, e.g. mup's per-group scales from `ModelFns.lr_multipliers`).

    Stateless, and the multipliers are constants of the step: nothing to shard (FSDP, tensor
    parallelism) and nothing to stack (packed members share their model, hence their multipliers)."""
    return optax.stateless(lambda updates, _params: jax.tree.map(lambda u, m: u * m, updates, multipliers))


def adamw_update(params, grads, opt_state, step, hyper: Hyper, lr_multipliers=None):
    """One AdamW step at the schedule's learning rate: (new params, new opt state, lr).

    `lr_multipliers` (None: one learning rate for all) scales each parameter's step, weight decay
    included, as a per-parameter-group learning rate would."""
    g_norm = optax.tree.norm(grads)
    scale = jnp.where((hyper.clip > 0) & (g_norm > hyper.clip), hyper.clip / g_norm, 1.0)
    grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
    adam = optax.scale_by_adam(b1=hyper.b1, b2=hyper.b2, eps=hyper.eps)
    direction, opt_state = adam.update(grads, opt_state, params)
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
