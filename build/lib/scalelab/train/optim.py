"""AdamW with global-norm clipping, no weight decay on norms, and the learning-rate schedules.

Schedules are functions of the step and a `Schedule` (peak, warmup steps, total steps, decay start,
final lr) that the train step receives as an input rather than as constants:
runs that differ only in length (the points of a sweep) then share one compiled step, and JAX's
persistent compilation cache serves the whole sweep.

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


def warmup_steps(schedule_cfg, total_steps: int) -> int:
    w = schedule_cfg.warmup
    return min(int(round(w * total_steps)) if w < 1 else int(w), total_steps)


class Schedule(NamedTuple):
    """The numbers of one run's learning-rate schedule (a pytree of float32 scalars: a step input)."""

    peak: np.float32
    warmup: np.float32  # steps
    total: np.float32  # steps
    decay_start: np.float32  # the step where WSD's decay begins (= total for other schedules)
    final: np.float32  # lr at the end of the decay

    def as_input(self) -> Schedule:
        return Schedule(*(jnp.asarray(v, jnp.float32) for v in self))


def schedule_values(schedule_cfg, peak_lr: float, total_steps: int) -> Schedule:
    """The schedule of one run of `total_steps` steps peaking at `peak_lr`."""
    warm = warmup_steps(schedule_cfg, total_steps)
    decay_start = total_steps - int(round(schedule_cfg.decay * total_steps)) if schedule_cfg.name == "wsd" \
        else total_steps
    final = peak_lr * schedule_cfg.final_lr_ratio
    return Schedule(*(np.float32(v) for v in (peak_lr, warm, total_steps, decay_start, final)))


def learning_rate(name: str, step, sched: Schedule):
    """The learning rate at `step` (0-based) for schedule `name`."""
    peak, warm, total, decay_start, final = sched
    s = jnp.asarray(step, jnp.float32)
    ramp = peak * (s + 1) / jnp.maximum(warm, 1)
    if name == "cosine":
        progress = jnp.clip((s - warm) / jnp.maximum(total - warm, 1), 0, 1)
        after = final + (peak - final) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
    elif name == "wsd":
        progress = jnp.clip((s - decay_start) / jnp.maximum(total - decay_start, 1), 0, 1)
        after = peak + (final - peak) * progress
    else:
        after = peak
    return jnp.where(s < warm, ramp, after)


def decay_mask(params):
    """True for matrices (weight decay), False for vectors such as norm scales and biases."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(opt_cfg) -> optax.GradientTransformation:
    """Clipping and AdamW at unit learning rate: the step scales the update by the schedule's lr."""
    parts = []
    if opt_cfg.clip > 0:
        parts.append(optax.clip_by_global_norm(opt_cfg.clip))
    parts.append(
        optax.adamw(1.0, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                    weight_decay=opt_cfg.weight_decay, mask=decay_mask)
    )
    return optax.chain(*parts)
