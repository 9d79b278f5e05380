"""The routing of a mixture-of-experts layer: router, top-k, dispatch to experts, combine, statistics.

Tensor names add to the model's legend: E experts, C capacity (slots per expert and sequence),
K experts per token (top_k), F an expert's width, S assignments (B*T*K) in dropless order.

* **Router**: softmax over E logits (computed in fp32), the top K probabilities renormalised to sum
  to one; those weights multiply the experts' outputs.
* **capacity** dispatch (the default): each sequence gives each expert C = ceil(capacity_factor x
  seq_len x K / E) slots. Assignments claim slots in token order (token t's K choices before token
  t+1's), so a token's fate depends only on the tokens before it: the layer is causal, a prefix
  computes what the whole sequence computes at its positions, and the KV-cache decoder agrees with
  the forward pass (its cache counts each expert's claimed slots). An assignment beyond its
  expert's capacity is dropped: that expert adds nothing to the token, whose residual stream
  passes through. Tokens reach their slots by a gather and come back by another (no one-hot
  matmuls), so the layer's FLOPs are the experts' matmuls: E x C x 6 x D x F per sequence, the
  active FLOPs times capacity_factor.
* **dropless** dispatch: every assignment is computed. Assignments are sorted by expert and the
  experts run as grouped matmuls (`jax.lax.ragged_dot`). On GPUs and TPUs that is a grouped GEMM;
  XLA:CPU (jax 0.10) computes it as a dense dot against all E experts, E times the FLOPs (NOTES.md
  has the measurement), which is why capacity is the default.
* **Statistics** of each layer: the load-balancing loss E x sum_e f_e P_e (f_e the share of
  assignments routed to expert e, P_e its mean router probability; 1 when balanced; Switch
  Transformer's form), the router z-loss mean(logsumexp(logits)^2), the busiest expert's
  assignments over the mean, and the share of assignments dropped.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from scalelab.model import hints


def capacity(seq_len: int, top_k: int, experts: int, factor: float) -> int:
    """Slots per expert and sequence."""
    return max(1, math.ceil(factor * seq_len * top_k / experts))


def route(x_BxTxD, router_DxE, top_k: int):
    """(router logits BxTxE in fp32, chosen experts BxTxK, their renormalised weights BxTxK)."""
    logits_BxTxE = jnp.einsum("btd,de->bte", x_BxTxD.astype(jnp.float32), router_DxE.astype(jnp.float32))
    probs_BxTxE = jax.nn.softmax(logits_BxTxE, axis=-1)
    weights_BxTxK, experts_BxTxK = jax.lax.top_k(probs_BxTxE, top_k)
    weights_BxTxK = weights_BxTxK / jnp.sum(weights_BxTxK, axis=-1, keepdims=True)
    return logits_BxTxE, experts_BxTxK, weights_BxTxK


def router_stats(logits_BxTxE, experts_BxTxK, kept_BxTxK) -> dict:
    """The layer's auxiliary losses and load figures (scalars)."""
    B, T, E = logits_BxTxE.shape
    # sums over the whole batch (hints.batch_sum adds the other devices' rows under shard_map)
    tokens = hints.batch_sum(jnp.float32(B * T))
    counts_E = hints.batch_sum(jnp.sum(jax.nn.one_hot(experts_BxTxK, E, dtype=jnp.float32), axis=(0, 1, 2)))
    share_E = counts_E / jnp.sum(counts_E)
    mean_prob_E = hints.batch_sum(jnp.sum(jax.nn.softmax(logits_BxTxE, axis=-1), axis=(0, 1))) / tokens
    z_sum = hints.batch_sum(jnp.sum(jax.nn.logsumexp(logits_BxTxE, axis=-1) ** 2))
    kept = hints.batch_sum(jnp.sum(kept_BxTxK.astype(jnp.float32)))
    return {"aux_loss": E * jnp.sum(share_E * mean_prob_E),
            "z_loss": z_sum / tokens,
            "max_load": jnp.max(counts_E) / jnp.mean(counts_E),
            "dropped": 1.0 - kept / (tokens * experts_BxTxK.shape[-1])}


def slots(experts_BxTxK, n_experts: int, cap: int, filled_BxE=None):
    """Each assignment's slot, expert * C + its place in the expert's queue, and whether it got one.

    Assignments queue in token order; `filled_BxE` (the KV cache's count of slots the earlier
    tokens of each row claimed) starts each expert's queue further on."""
    B, T, K = experts_BxTxK.shape
    onehot_BxTKxE = jax.nn.one_hot(experts_BxTxK.reshape(B, T * K), n_experts, dtype=jnp.int32)
    before_BxTKxE = jnp.cumsum(onehot_BxTKxE, axis=1) - onehot_BxTKxE
    if filled_BxE is not None:
        before_BxTKxE = before_BxTKxE + filled_BxE[:, None, :]
    place_BxTK = jnp.sum(before_BxTKxE * onehot_BxTKxE, axis=-1)
    kept_BxTK = place_BxTK < cap
    slot_BxTK = jnp.where(kept_BxTK, experts_BxTxK.reshape(B, T * K) * cap + place_BxTK, n_experts * cap)
    return slot_BxTK.reshape(B, T, K), kept_BxTK.reshape(B, T, K)


def gather_to_slots(x_BxTxD, slot_BxTxK, n_slots: int):
    """The tokens in their experts' slots, BxE*CxD (an empty slot holds token 0: never read back)."""
    B, T, K = slot_BxTxK.shape
    token_BxTK = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None, :, None], (B, T, K)).reshape(B, T * K)
    source_BxS1 = jnp.zeros((B, n_slots + 1), jnp.int32)  # the last slot takes the dropped assignments
    source_BxS1 = jax.vmap(lambda src, slot, tok: src.at[slot].set(tok))(source_BxS1, slot_BxTxK.reshape(B, T * K),
                                                                          token_BxTK)
    return jax.vmap(lambda x, src: x[src])(x_BxTxD, source_BxS1[:, :n_slots])


def combine_from_slots(y_BxSxD, slot_BxTxK, weights_BxTxK, kept_BxTxK):
    """Each token's weighted sum of its kept experts' outputs, BxTxD."""
    B, S, D = y_BxSxD.shape
    padded_BxS1xD = jnp.concatenate([y_BxSxD, jnp.zeros((B, 1, D), y_BxSxD.dtype)], axis=1)
    picked_BxTxKxD = jax.vmap(lambda y, s: y[s])(padded_BxS1xD, slot_BxTxK)
    w_BxTxK = (weights_BxTxK * kept_BxTxK).astype(y_BxSxD.dtype)
    return jnp.einsum("btkd,btk->btd", picked_BxTxKxD, w_BxTxK)


def swiglu_experts(x_BxExCxD, w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD):
    gate_BxExCxF = jnp.einsum("becd,edf->becf", x_BxExCxD, w_gate_ExDxF)
    up_BxExCxF = jnp.einsum("becd,edf->becf", x_BxExCxD, w_up_ExDxF)
    return jnp.einsum("becf,efd->becd", jax.nn.silu(gate_BxExCxF) * up_BxExCxF, w_down_ExFxD)


def dropless(x_BxTxD, experts_BxTxK, weights_BxTxK, w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD):
    """Every assignment computed: sorted by expert, grouped matmuls, unsorted, weighted, summed."""
    B, T, K = experts_BxTxK.shape
    E, D = w_gate_ExDxF.shape[0], x_BxTxD.shape[-1]
    expert_S = experts_BxTxK.reshape(-1)
    order_S = jnp.argsort(expert_S, stable=True)
    x_SxD = x_BxTxD.reshape(B * T, D)[order_S // K]
    sizes_E = jnp.bincount(expert_S, length=E).astype(jnp.int32)
    gate_SxF = jax.lax.ragged_dot(x_SxD, w_gate_ExDxF, sizes_E)
    up_SxF = jax.lax.ragged_dot(x_SxD, w_up_ExDxF, sizes_E)
    y_SxD = jax.lax.ragged_dot(jax.nn.silu(gate_SxF) * up_SxF, w_down_ExFxD, sizes_E)
    y_BxTxKxD = y_SxD[jnp.argsort(order_S)].reshape(B, T, K, D)
    return jnp.einsum("btkd,btk->btd", y_BxTxKxD, weights_BxTxK.astype(y_SxD.dtype))


def every_expert(x_BxTxD, experts_BxTxK, weights_BxTxK, w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD):
    """The reference: every expert on every token, then the chosen ones weighted (tests only: E x the FLOPs)."""
    y_BxTxExD = jnp.einsum("btef,efd->bted", jax.nn.silu(jnp.einsum("btd,edf->btef", x_BxTxD, w_gate_ExDxF))
                           * jnp.einsum("btd,edf->btef", x_BxTxD, w_up_ExDxF), w_down_ExFxD)
    picked_BxTxKxD = jnp.take_along_axis(y_BxTxExD, experts_BxTxK[..., None], axis=2)
    return jnp.einsum("btkd,btk->btd", picked_BxTxKxD, weights_BxTxK.astype(x_BxTxD.dtype))
