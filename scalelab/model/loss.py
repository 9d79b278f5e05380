"""The next-token loss: one definition for training (a mean) and evaluation (weighted sums)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from scalelab.model.functional import ModelFns


def token_nll(fns: ModelFns, params: dict, windows_BxT1, moe_stats: list | None = None) -> jax.Array:
    """Cross-entropy (nats) of predicting windows[:, 1:] from windows[:, :-1], per token: BxT."""
    inputs_BxT, targets_BxT = windows_BxT1[:, :-1], windows_BxT1[:, 1:]
    logits_BxTxV = fns.apply(params, inputs_BxT, moe_stats=moe_stats).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)


def training_loss(fns: ModelFns, params: dict, windows_BxT1) -> tuple[jax.Array, dict]:
    """(the loss training minimises, its metrics): the next-token loss (`train_loss`), plus for an
    MoE model its layers' mean load-balancing and z losses times their coefficients, and each MoE
    layer's busiest-expert load over the mean (`moe_max_load/LAYER`) and dropped share."""
    stats: list = []
    loss = token_nll(fns, params, windows_BxT1, stats).mean()
    if not stats:
        return loss, {"train_loss": loss}
    spec = fns.spec
    aux = jnp.mean(jnp.stack([s["aux_loss"] for s in stats]))
    z = jnp.mean(jnp.stack([s["z_loss"] for s in stats]))
    metrics = {"train_loss": loss, "moe_aux_loss": aux, "moe_z_loss": z}
    layers = [i for i in range(spec.n_layers) if spec.shape.is_moe_layer(i)]
    for layer, s in zip(layers, stats):
        metrics[f"moe_max_load/{layer}"] = s["max_load"]
        if spec.moe_dispatch == "capacity":
            metrics[f"moe_dropped/{layer}"] = s["dropped"]
    return loss + spec.moe_aux_loss * aux + spec.moe_z_loss * z, metrics


def continuation_logprobs(fns: ModelFns, params: dict, windows_BxT1, mask_BxT) -> tuple[jax.Array, jax.Array]:
    """(summed log-probability of the masked next tokens, whether each masked token is the argmax)
    per row: the likelihood of a continuation (the masked targets) given what precedes it."""
    inputs_BxT, targets_BxT = windows_BxT1[:, :-1], windows_BxT1[:, 1:]
    logits_BxTxV = fns.apply(params, inputs_BxT).astype(jnp.float32)
    logp_BxT = -optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
    greedy_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT) | ~mask_BxT
    return jnp.sum(jnp.where(mask_BxT, logp_BxT, 0.0), axis=1), jnp.all(greedy_BxT, axis=1)


def next_token_loss(fns: ModelFns, params: dict, windows_BxT1) -> jax.Array:
    """Mean cross-entropy (nats per token) of a batch: the training and evaluation loss."""
    return token_nll(fns, params, windows_BxT1).mean()


def weighted_loss_sum(fns: ModelFns, params: dict, windows_BxT1, weights_B) -> jax.Array:
    """Summed cross-entropy of the rows with weight 1 (padding rows carry weight 0)."""
    return jnp.sum(token_nll(fns, params, windows_BxT1).sum(axis=1) * weights_B)
