"""The attention kernels agree with XLA's reference attention, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.model import attention
from scalelab.train.step import auto_grad_accum


def qkv(B, T, N, K, H, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (B, T, N, H))
    k = jax.random.normal(keys[1], (B, T, K, H))
    v = jax.random.normal(keys[2], (B, T, K, H))
    cotangent = jax.random.normal(keys[3], (B, T, N, H))
    return q, k, v, cotangent


def output_and_grads(fn, q, k, v, cotangent):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(cotangent))


def reference(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


@pytest.mark.parametrize("T, N, K, block", [
    (96, 4, 4, 32),  # three full blocks, multi-head
    (100, 4, 2, 32),  # a last, shorter block; grouped-query (2 query heads per kv head)
    (64, 6, 1, 64),  # one block (plain masked attention); multi-query
])
def test_blockwise_matches_xla_forward_and_backward(T, N, K, block):
    q, k, v, cotangent = qkv(2, T, N, K, 16)
    blockwise = jax.jit(lambda q, k, v: attention.blockwise_causal(q, k, v, block))
    got = output_and_grads(blockwise, q, k, v, cotangent)
    want = output_and_grads(reference, q, k, v, cotangent)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_blockwise_is_causal():
    q, k, v, _ = qkv(1, 64, 2, 2, 8)
    before = attention.blockwise_causal(q, k, v, block=16)
    after = attention.blockwise_causal(q, k.at[:, 40:].set(0.0), v.at[:, 40:].set(9.0), block=16)
    np.testing.assert_array_equal(before[:, :40], after[:, :40])
    assert not np.allclose(before[:, 40:], after[:, 40:])


def test_blockwise_in_bf16_keeps_fp32_softmax():
    q, k, v, _ = qkv(2, 128, 4, 4, 16)
    got = attention.blockwise_causal(*(x.astype(jnp.bfloat16) for x in (q, k, v)), block=64)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), reference(q, k, v), atol=0.05)


@pytest.mark.slow
def test_splash_kernel_in_interpret_mode_matches_xla():
    """The TPU kernel's wiring (layout, scaling, GQA repeat) checked by Pallas' interpreter on CPU."""
    q, k, v, cotangent = qkv(1, 256, 4, 2, 64)
    splash = jax.jit(lambda q, k, v: attention.splash_causal(q, k, v, interpret=True))
    got = output_and_grads(splash, q, k, v, cotangent)
    want = output_and_grads(reference, q, k, v, cotangent)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("platform, precision, seq_len, head_dim, chosen", [
    ("cpu", "fp32", 256, 64, "blockwise"),
    ("gpu", "bf16", 256, 64, "cudnn"),
    ("gpu", "fp32", 256, 64, "xla"),  # cuDNN's flash kernel has no fp32
    ("tpu", "bf16", 2048, 128, "splash"),
    ("tpu", "bf16", 100, 128, "xla"),  # not a whole number of splash blocks
])
def test_auto_picks_the_platforms_kernel(platform, precision, seq_len, head_dim, chosen):
    assert attention.resolve("auto", precision, seq_len, head_dim, platform) == chosen
    assert attention.resolve("xla", precision, seq_len, head_dim, platform) == "xla"


@pytest.mark.parametrize("batch, seq_len, shards, platform, accum", [
    (16, 256, 1, "cpu", 4),  # 4 rows x 256 = 1024 tokens per microbatch
    (4, 1024, 1, "cpu", 4),  # one row per microbatch
    (16, 64, 1, "cpu", 1),  # the whole batch is 1024 tokens
    (16, 256, 8, "cpu", 1),  # 8 shards: 2 rows each, no room to split
    (64, 256, 2, "cpu", 8),  # 8 rows per microbatch, 4 per shard
    (12, 256, 1, "cpu", 3),  # a divisor of 12 that keeps 1024 tokens
    (16, 256, 1, "gpu", 1),
])
def test_auto_grad_accum(batch, seq_len, shards, platform, accum):
    assert auto_grad_accum(batch, seq_len, shards, platform) == accum
