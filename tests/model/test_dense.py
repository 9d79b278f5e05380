import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.model.dense import dense


def loss(mm, x, w):
    return jnp.sum(jnp.tanh(mm(x, w)) ** 2)


@pytest.mark.parametrize("x_shape", [(3, 5, 8), (7, 8)])
def test_gradients_equal_autodiffs_for_any_leading_axes(x_shape):
    kx, kw = jax.random.split(jax.random.key(0))
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, (8, 6)) * 0.3
    ours = jax.grad(lambda x, w: loss(dense, x, w), argnums=(0, 1))(x, w)
    autodiff = jax.grad(lambda x, w: loss(jnp.matmul, x, w), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(dense(x, w), x @ w, rtol=1e-6)
    for a, b in zip(ours, autodiff):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_vmapped_members_and_bf16_keep_their_shapes_and_dtypes():
    x = jax.random.normal(jax.random.key(1), (4, 2, 16, 8))  # members x batch x tokens x D
    w = jax.random.normal(jax.random.key(2), (4, 8, 12))
    grad = jax.vmap(jax.grad(lambda w, x: loss(dense, x, w)))(w, x)
    expected = jax.vmap(jax.grad(lambda w, x: loss(jnp.matmul, x, w)))(w, x)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
    gw = jax.grad(lambda w: loss(dense, x[0].astype(jnp.bfloat16), w).astype(jnp.float32))(w[0].astype(jnp.bfloat16))
    assert gw.dtype == jnp.bfloat16 and gw.shape == (8, 12)
