"""A decoder-only Transformer in Flax NNX.

token embedding -> n_layers x [RMSNorm -> causal self-attention (RoPE, GQA) -> residual,
RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> output projection (tied or not).

Every parameter carries `logical_axes` metadata (`vocab`, `embed`, `heads`, `kv_heads`,
`head_dim`, `mlp`, `norm`); `scalelab.train.mesh` turns those names into shardings through the rules in
`mesh.rules`, so the model itself never names a mesh axis. Tensor names carry their shapes:
B batch, T sequence, D d_model, N query heads, K kv heads, H head_dim, F d_ff, V vocab.
With `experts` > 0 in the shape, every `moe_every`-th block's MLP is a mixture of experts (`MoE`;
its routing is scalelab/model/moe.py, which adds E experts, C capacity to the legend).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from scalelab import ledger
from scalelab.config import ConfigError
from scalelab.model import attention, hints, moe, parametrization
from scalelab.model.dense import dense

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "fp32": jnp.float32, "bf16": jnp.bfloat16}


SHAPE_KEYS = tuple(f.name for f in dataclasses.fields(ledger.Shape))


@dataclass(frozen=True)
class ModelSpec:
    """What building the model needs: its architecture (`ledger.Shape`) plus how it computes."""

    shape: ledger.Shape
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    attention: str = "xla"  # an implementation name of scalelab.model.attention ("auto" resolved by the build)
    remat: str = "none"
    parametrization: str = "standard"  # standard | mup: scalelab/model/parametrization.py
    mup_base_width: int = 256
    mup_base_head_dim: int = 0  # 0: this model's head_dim
    moe_dispatch: str = "capacity"  # capacity | dropless (scalelab/model/moe.py)
    capacity_factor: float = 1.25
    moe_aux_loss: float = 0.01  # the training loss's coefficients of the MoE layers' mean aux and z losses
    moe_z_loss: float = 0.001

    # the architecture's numbers, read through the one shape record
    d_model = property(lambda self: self.shape.d_model)
    n_layers = property(lambda self: self.shape.n_layers)
    n_heads = property(lambda self: self.shape.n_heads)
    n_kv_heads = property(lambda self: self.shape.n_kv_heads)
    d_ff = property(lambda self: self.shape.d_ff)
    vocab = property(lambda self: self.shape.vocab)  # padded
    head_dim = property(lambda self: self.shape.head_dim)
    tied_embeddings = property(lambda self: self.shape.tied_embeddings)

    @classmethod
    def build(cls, seq_len: int = 256, **fields) -> ModelSpec:
        """A spec from flat keyword arguments (tests, notebooks): architecture keys go to the shape."""
        return cls(shape=ledger.Shape(seq_len=seq_len, **{k: fields.pop(k) for k in SHAPE_KEYS if k in fields}),
                   **fields)

    def replace(self, **fields) -> ModelSpec:
        """A copy with some fields changed, architecture keys included."""
        shape = dataclasses.replace(self.shape, **{k: fields.pop(k) for k in SHAPE_KEYS if k in fields})
        return dataclasses.replace(self, shape=shape, **fields)


def resolve_attention(name: str, precision: str, seq_len: int, head_dim: int) -> str:
    """`model.attention` made concrete for this platform; a kernel the platform lacks is a ConfigError."""
    chosen = attention.resolve(name, precision, seq_len, head_dim)
    platform = jax.default_backend()
    needs = {"cudnn": "gpu", "splash": "tpu"}.get(chosen)
    if needs and platform != needs:
        raise ConfigError("model.attention", f"{chosen} runs on {needs.upper()} only; this run is on {platform} "
                                             "(use auto, blockwise or xla)")
    if chosen == "cudnn" and precision != "bf16":
        raise ConfigError("model.attention", "cudnn flash attention needs train.precision=bf16")
    if chosen == "splash" and seq_len % attention.SPLASH_BLOCK:
        raise ConfigError("model.attention", f"splash attention needs data.seq_len to be a multiple of "
                                             f"{attention.SPLASH_BLOCK}; got {seq_len}")
    return chosen


def _param(rngs: nnx.Rngs, shape, std: float, axes: tuple, dtype) -> nnx.Param:
    """A normal(0, std) matrix; `init_std` is kept as metadata so `ModelFns.init` (functional.py) can draw all
    parameters from one random stream (one RNG op compiles much faster than one per parameter)."""
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value.astype(dtype), logical_axes=axes, init_std=std)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x_BxTxD):
        x = x_BxTxD.astype(jnp.float32)
        normed = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(x_BxTxD.dtype)


def rotary_tables(positions_BxT, head_dim: int, theta: float):
    """sin and cos of shape BxTx1x(H/2) for rotary position embeddings at the given positions."""
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions_BxT[..., None].astype(jnp.float32) * inv_freq
    return jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]


def apply_rotary(x_BxTxNxH, sin, cos):
    x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_BxTxNxH.dtype)


class Attention(nnx.Module):
    def __init__(self, spec: ModelSpec, rngs: nnx.Rngs):
        D, N, K, H = spec.d_model, spec.n_heads, spec.n_kv_heads, spec.head_dim
        pd = DTYPES[spec.param_dtype]
        std = parametrization.hidden_std(spec, spec.init_std)
        out_std = std / (2 * spec.n_layers) ** 0.5
        self.wq = _param(rngs, (D, N, H), std, ("embed", "heads", "head_dim"), pd)
        self.wk = _param(rngs, (D, K, H), std, ("embed", "kv_heads", "head_dim"), pd)
        self.wv = _param(rngs, (D, K, H), std, ("embed", "kv_heads", "head_dim"), pd)
        self.wo = _param(rngs, (N, H, D), out_std, ("heads", "head_dim", "embed"), pd)
        self.spec = spec
        self.query_multiplier = parametrization.query_multiplier(spec)

    def __call__(self, x_BxTxD, sin, cos, cache=None):
        dt = x_BxTxD.dtype
        q_BxTxNxH = jnp.einsum("btd,dnh->btnh", x_BxTxD, self.wq[...].astype(dt))
        k_BxTxKxH = jnp.einsum("btd,dkh->btkh", x_BxTxD, self.wk[...].astype(dt))
        v_BxTxKxH = jnp.einsum("btd,dkh->btkh", x_BxTxD, self.wv[...].astype(dt))
        q_BxTxNxH = apply_rotary(q_BxTxNxH, sin, cos)
        if self.query_multiplier is not None:  # mup: times the kernels' own 1/sqrt(H), scores scale as 1/H
            q_BxTxNxH = q_BxTxNxH * jnp.asarray(self.query_multiplier, dt)
        k_BxTxKxH = apply_rotary(k_BxTxKxH, sin, cos)
        if cache is None:
            out_BxTxNxH = attention.causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, self.spec.attention)
            new_cache = None
        else:
            out_BxTxNxH, new_cache = cache.attend(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
        y_BxTxD = jnp.einsum("btnh,nhd->btd", out_BxTxNxH, self.wo[...].astype(dt))
        return y_BxTxD, new_cache


class SwiGLU(nnx.Module):
    def __init__(self, spec: ModelSpec, rngs: nnx.Rngs, width: int | None = None):
        D, F = spec.d_model, width or spec.d_ff
        pd = DTYPES[spec.param_dtype]
        std = parametrization.hidden_std(spec, spec.init_std)
        self.w_gate = _param(rngs, (D, F), std, ("embed", "mlp"), pd)
        self.w_up = _param(rngs, (D, F), std, ("embed", "mlp"), pd)
        self.w_down = _param(rngs, (F, D), std / (2 * spec.n_layers) ** 0.5, ("mlp", "embed"), pd)

    def __call__(self, x_BxTxD):
        dt = x_BxTxD.dtype
        gate_BxTxF = dense(x_BxTxD, self.w_gate[...].astype(dt))
        up_BxTxF = dense(x_BxTxD, self.w_up[...].astype(dt))
        return dense(jax.nn.silu(gate_BxTxF) * up_BxTxF, self.w_down[...].astype(dt))


class MoE(nnx.Module):
    """A mixture-of-experts SwiGLU layer: router, E experts of width d_expert, optional shared experts."""

    def __init__(self, spec: ModelSpec, rngs: nnx.Rngs):
        s = spec.shape
        D, E, F = s.d_model, s.experts, s.d_expert
        pd = DTYPES[spec.param_dtype]
        std = parametrization.hidden_std(spec, spec.init_std)
        self.router = _param(rngs, (D, E), std, ("embed", "router"), pd)
        self.w_gate = _param(rngs, (E, D, F), std, ("expert", "embed", "mlp"), pd)
        self.w_up = _param(rngs, (E, D, F), std, ("expert", "embed", "mlp"), pd)
        self.w_down = _param(rngs, (E, F, D), std / (2 * s.n_layers) ** 0.5, ("expert", "mlp", "embed"), pd)
        if s.shared_experts:
            self.shared = SwiGLU(spec, rngs, width=s.shared_experts * F)
        self.spec = spec

    def __call__(self, x_BxTxD, cache=None):
        """(output BxTxD, this layer's statistics, the updated cache)."""
        s, dt = self.spec.shape, x_BxTxD.dtype
        weights = [w[...].astype(dt) for w in (self.w_gate, self.w_up, self.w_down)]
        logits_BxTxE, experts_BxTxK, weights_BxTxK = moe.route(x_BxTxD, self.router[...], s.top_k)
        if self.spec.moe_dispatch == "dropless":
            y_BxTxD = moe.dropless(x_BxTxD, experts_BxTxK, weights_BxTxK, *weights)
            kept_BxTxK = jnp.ones(experts_BxTxK.shape, bool)
        else:
            B, T, K = experts_BxTxK.shape
            C = moe.capacity(s.seq_len, s.top_k, s.experts, self.spec.capacity_factor)
            filled_BxE = None if cache is None else cache.filled(T)
            slot_BxTxK, kept_BxTxK = moe.slots(experts_BxTxK, s.experts, C, filled_BxE)
            x_BxExCxD = moe.gather_to_slots(x_BxTxD, slot_BxTxK, s.experts * C).reshape(B, s.experts, C, -1)
            y_BxExCxD = hints.from_experts(moe.swiglu_experts(hints.to_experts(x_BxExCxD), *weights))
            y_BxTxD = moe.combine_from_slots(y_BxExCxD.reshape(B, s.experts * C, -1), slot_BxTxK, weights_BxTxK,
                                             kept_BxTxK)
            y_BxTxD = hints.constrain(y_BxTxD, ("batch", None, None))
            if cache is not None:
                cache = cache.claim(experts_BxTxK, kept_BxTxK, s.experts)
        if s.shared_experts:
            y_BxTxD = y_BxTxD + self.shared(x_BxTxD)
        return y_BxTxD, moe.router_stats(logits_BxTxE, experts_BxTxK, kept_BxTxK), cache


class Block(nnx.Module):
    def __init__(self, spec: ModelSpec, rngs: nnx.Rngs, layer: int = 0):
        pd = DTYPES[spec.param_dtype]
        self.attn_norm = RMSNorm(spec.d_model, spec.norm_eps, pd)
        self.attn = Attention(spec, rngs)
        self.mlp_norm = RMSNorm(spec.d_model, spec.norm_eps, pd)
        self.mlp = MoE(spec, rngs) if spec.shape.is_moe_layer(layer) else SwiGLU(spec, rngs)

    def __call__(self, x_BxTxD, sin, cos, cache=None):
        """(the residual stream after the block, the updated cache, MoE statistics or None)."""
        y_BxTxD, new_cache = self.attn(self.attn_norm(x_BxTxD), sin, cos, cache)
        x_BxTxD = x_BxTxD + y_BxTxD
        stats = None
        if isinstance(self.mlp, MoE):
            y_BxTxD, stats, new_cache = self.mlp(self.mlp_norm(x_BxTxD), new_cache)
        else:
            y_BxTxD = self.mlp(self.mlp_norm(x_BxTxD))
        return x_BxTxD + y_BxTxD, new_cache, stats


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Transformer(nnx.Module):
    def __init__(self, spec: ModelSpec, rngs: nnx.Rngs):
        pd = DTYPES[spec.param_dtype]
        self.spec = spec
        self.embed = _param(rngs, (spec.vocab, spec.d_model), spec.init_std, ("vocab", "embed"), pd)
        self.blocks = nnx.List([Block(spec, rngs, layer) for layer in range(spec.n_layers)])
        self.final_norm = RMSNorm(spec.d_model, spec.norm_eps, pd)
        if not spec.tied_embeddings:
            self.lm_head = _param(rngs, (spec.d_model, spec.vocab), spec.init_std, ("embed", "vocab"), pd)

    def __call__(self, tokens_BxT, positions_BxT=None, caches=None, probes: dict | None = None,
                 moe_stats: list | None = None):
        """Logits (in the compute dtype) for every position; with `caches`, also the updated caches.

        `probes`, a dict, receives the activations `embedding`, `block0` ... (each block's output,
        the residual stream) and `logits` (for the coordinate check, scalelab/bench/coord_check.py).
        `moe_stats`, a list, receives each MoE layer's statistics (`moe.router_stats`), in order."""
        spec = self.spec
        dt = DTYPES[spec.compute_dtype]
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
        sin, cos = rotary_tables(positions_BxT, spec.head_dim, spec.rope_theta)
        x_BxTxD = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(dt)
        if probes is not None:
            probes["embedding"] = x_BxTxD
        new_caches = []
        for i, block in enumerate(self.blocks):
            cache = None if caches is None else caches[i]
            if spec.remat != "none" and caches is None:
                x_BxTxD, _, stats = nnx.remat(lambda b, x: b(x, sin, cos), policy=REMAT_POLICIES[spec.remat])(
                    block, x_BxTxD
                )
            else:
                x_BxTxD, cache, stats = block(x_BxTxD, sin, cos, cache)
            new_caches.append(cache)
            if stats is not None and moe_stats is not None:
                moe_stats.append(stats)
            if probes is not None:
                probes[f"block{i}"] = x_BxTxD
        x_BxTxD = self.final_norm(x_BxTxD)
        w_DxV = self.embed[...].T if spec.tied_embeddings else self.lm_head[...]
        logits_BxTxV = dense(x_BxTxD, w_DxV.astype(dt))
        multiplier = parametrization.logit_multiplier(spec)
        if multiplier is not None:  # mup: the output layer's 1/r
            logits_BxTxV = logits_BxTxV * jnp.asarray(multiplier, dt)
        if probes is not None:
            probes["logits"] = logits_BxTxV
        return logits_BxTxV if caches is None else (logits_BxTxV, new_caches)
