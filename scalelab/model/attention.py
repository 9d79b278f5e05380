"""Causal self-attention kernels, chosen by `model.attention`.

All take q BxTxNxH and k, v BxTxKxH (K divides N: grouped-query attention) and return BxTxNxH.

* `xla`: `jax.nn.dot_product_attention`, the full TxT score matrix with a causal mask.
* `cudnn`: the same call with cuDNN's fused (flash) kernel; NVIDIA GPUs, bf16/fp16 only.
* `blockwise`: queries in blocks of `block` rows, each attending only to the keys up to its own
  last row, so the masked upper triangle is (almost) never computed and each block's scores stay
  small enough for the CPU's caches (much faster than `xla` on CPUs, see NOTES.md); the math is the
  same softmax, so results agree to rounding. Its blocks call `masked_attention`, the formula the KV
  cache's decoding uses as well.
* `splash`: the Pallas splash-attention kernel for TPUs (`splash_causal(..., interpret=True)` runs
  it anywhere, slowly; the tests use that).
* `auto`: what `resolve` picks for the platform: cudnn on GPUs in bf16, splash on TPUs when the
  shapes fit its blocks, blockwise on CPUs, xla otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scalelab.config import ATTENTION_KERNELS as IMPLEMENTATIONS

SPLASH_BLOCK = 128


def resolve(name: str, compute_dtype: str, seq_len: int | None = None, head_dim: int | None = None,
            platform: str | None = None) -> str:
    """The implementation `auto` stands for on this platform; other names are returned unchanged."""
    if name != "auto":
        return name
    platform = platform or jax.default_backend()
    if platform == "gpu":
        return "cudnn" if compute_dtype in ("bf16", "bfloat16") else "xla"
    if platform == "tpu":
        fits = seq_len is not None and seq_len % SPLASH_BLOCK == 0 and (head_dim or 0) % 128 == 0
        return "splash" if fits else "xla"
    if platform == "cpu":
        return "blockwise"
    return "xla"


def block_size(seq_len: int) -> int:
    """Query rows per block: 64, or more for sequences over 1024 so that there are at most 16 blocks.

    Small blocks keep each block's scores in cache and skip more of the masked half; the blocks are
    unrolled, so their number is capped to bound compile time (measurements in NOTES.md)."""
    return max(64, -(-seq_len // 16))


def blockwise_causal(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, block: int | None = None):
    T = q_BxTxNxH.shape[1]
    block = block or block_size(T)
    outs = []
    for lo in range(0, T, block):
        hi = min(lo + block, T)
        visible_QxS = (lo + jnp.arange(hi - lo))[:, None] >= jnp.arange(hi)[None, :]
        outs.append(masked_attention(q_BxTxNxH[:, lo:hi], k_BxTxKxH[:, :hi], v_BxTxKxH[:, :hi], visible_QxS))
    return jnp.concatenate(outs, axis=1)


def masked_attention(q_BxQxNxH, k_BxSxKxH, v_BxSxKxH, visible_QxS):
    """Softmax attention of Q queries over S keys where `visible` (QxS, or BxQxS per row) is true.

    The one formula of every CPU path: the blockwise kernel's blocks and the KV cache's decoding
    (scalelab/infer/generate.py) both call it, so that cached decoding computes what training did:
    queries scaled by 1/sqrt(H) in their dtype, scores accumulated in float32, hidden keys at
    float32's lowest value (they get exactly zero weight), probabilities cast to the values' dtype.
    """
    B, Q, N, H = q_BxQxNxH.shape
    K = k_BxSxKxH.shape[2]
    q_BxQxKxGxH = (q_BxQxNxH * jnp.asarray(H**-0.5, q_BxQxNxH.dtype)).reshape(B, Q, K, N // K, H)
    scores_BxKxGxQxS = jnp.einsum("bqkgh,bskh->bkgqs", q_BxQxKxGxH, k_BxSxKxH, preferred_element_type=jnp.float32)
    visible = visible_QxS if visible_QxS.ndim == 2 else visible_QxS[:, None, None]  # BxQxS -> Bx1x1xQxS
    scores_BxKxGxQxS = jnp.where(visible, scores_BxKxGxQxS, jnp.finfo(jnp.float32).min)
    probs_BxKxGxQxS = jax.nn.softmax(scores_BxKxGxQxS, axis=-1).astype(v_BxSxKxH.dtype)
    return jnp.einsum("bkgqs,bskh->bqkgh", probs_BxKxGxQxS, v_BxSxKxH).reshape(B, Q, N, H)


def splash_causal(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, interpret: bool = False):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    B, T, N, H = q_BxTxNxH.shape
    K = k_BxTxKxH.shape[2]
    mask = splash.MultiHeadMask([splash.CausalMask((T, T)) for _ in range(N)])
    blocks = min(SPLASH_BLOCK, T)
    sizes = splash.BlockSizes(block_q=blocks, block_kv=blocks, block_kv_compute=blocks, block_q_dkv=blocks,
                              block_kv_dkv=blocks, block_kv_dkv_compute=blocks, block_q_dq=blocks, block_kv_dq=blocks)
    kernel = splash.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)
    # the kernel takes one sequence, heads first, queries pre-scaled, and as many kv heads as q heads
    q_BxNxTxH = jnp.swapaxes(q_BxTxNxH * jnp.asarray(H**-0.5, q_BxTxNxH.dtype), 1, 2)
    k_BxNxTxH = jnp.swapaxes(jnp.repeat(k_BxTxKxH, N // K, axis=2), 1, 2)
    v_BxNxTxH = jnp.swapaxes(jnp.repeat(v_BxTxKxH, N // K, axis=2), 1, 2)
    return jnp.swapaxes(jax.vmap(kernel)(q_BxNxTxH, k_BxNxTxH, v_BxNxTxH), 1, 2)


def causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, implementation: str):
    if implementation == "blockwise":
        return blockwise_causal(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
    if implementation == "splash":
        return splash_causal(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
    if implementation in ("xla", "cudnn"):
        return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, is_causal=True,
                                            implementation=implementation)
    raise ValueError(f"unknown attention implementation {implementation!r}; one of {IMPLEMENTATIONS}")
