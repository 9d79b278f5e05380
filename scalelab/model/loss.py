"""The next-token loss: one definition for training (a mean) and evaluation (weighted sums)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from scalelab.model.functional import ModelFns


def token_nll(fns: ModelFns, params: dict, windows_BxT1) -> jax.Array:
    """Cross-entropy (nats) of predicting windows[:, 1:] from windows[:, :-1], per token: BxT."""
    inputs_BxT, targets_BxT = windows_BxT1[:, :-1], windows_BxT1[:, 1:]
    logits_BxTxV = fns.apply(params, inputs_BxT).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)


def next_token_loss(fns: ModelFns, params: dict, windows_BxT1) -> jax.Array:
    """Mean cross-entropy (nats per token) of a batch: the training and evaluation loss."""
    return token_nll(fns, params, windows_BxT1).mean()


def weighted_loss_sum(fns: ModelFns, params: dict, windows_BxT1, weights_B) -> jax.Array:
    """Summed cross-entropy of the rows with weight 1 (padding rows carry weight 0)."""
    return jnp.sum(token_nll(fns, params, windows_BxT1).sum(axis=1) * weights_B)
