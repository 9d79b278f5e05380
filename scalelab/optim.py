"""AdamW with global-norm clipping, no weight decay on norms, and the learning-rate schedules.

Schedules are functions of the step over the run's total steps:
* cosine:   linear warmup to the peak, cosine decay to final_lr_ratio * peak at the last step;
* wsd:      warmup, a stable plateau at the peak, and a linear decay to final_lr_ratio * peak over
            the last `schedule.decay` fraction of steps (warmup-stable-decay);
* constant: warmup, then the peak.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def warmup_steps(schedule_cfg, total_steps: int) -> int:
    w = schedule_cfg.warmup
    return int(round(w * total_steps)) if w < 1 else int(w)


def make_schedule(schedule_cfg, peak_lr: float, total_steps: int) -> optax.Schedule:
    warm = min(warmup_steps(schedule_cfg, total_steps), total_steps)
    final = peak_lr * schedule_cfg.final_lr_ratio
    name = schedule_cfg.name
    if name == "cosine":
        rest = optax.cosine_decay_schedule(peak_lr, max(1, total_steps - warm), alpha=schedule_cfg.final_lr_ratio)
    elif name == "wsd":
        decay_steps = int(round(schedule_cfg.decay * total_steps))
        stable = max(0, total_steps - warm - decay_steps)
        rest = optax.join_schedules(
            [optax.constant_schedule(peak_lr), optax.linear_schedule(peak_lr, final, max(1, decay_steps))],
            [stable],
        )
    else:
        rest = optax.constant_schedule(peak_lr)
    if warm == 0:
        return rest
    # warmup ends at the peak on step `warm - 1`'s successor, so step 0 already trains (lr = peak/warm)
    warmup = optax.linear_schedule(peak_lr / warm, peak_lr, warm)
    return optax.join_schedules([warmup, rest], [warm])


def decay_mask(params):
    """True for matrices (weight decay), False for vectors such as norm scales and biases."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(opt_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    parts = []
    if opt_cfg.clip > 0:
        parts.append(optax.clip_by_global_norm(opt_cfg.clip))
    parts.append(
        optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                    weight_decay=opt_cfg.weight_decay, mask=decay_mask)
    )
    return optax.chain(*parts)
