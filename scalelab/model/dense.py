"""The model's projections x @ W, with a weight gradient XLA:CPU computes at its GEMM speed.

Autodiff's weight gradient of y = x @ W is x^T dy, contracted over the tokens. XLA:CPU lays the
token axis of dy out last for that dot, which leaves both operands transposed: it is not a form
YNNPACK takes, and the dot falls back to a loop that runs at ~20 GFLOP/s where the same product in
the other order reaches ~95 on one core (NOTES.md has the profile). On CPUs, `dense` computes
(dy^T x)^T instead, with an optimization barrier so that XLA does not fold the small transpose back
into the dot: for the quickstart's models that makes a training step 25-30% faster. The result is
the same product, summed in another order (it differs from autodiff's in the last bits). Other
platforms keep plain autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dense(x_BxTxD, w_DxF):
    """x @ W over the last axis of x (any leading axes)."""
    if jax.default_backend() == "cpu":
        return _dense_cpu(x_BxTxD, w_DxF)
    return x_BxTxD @ w_DxF


@jax.custom_vjp
def _dense_cpu(x_BxTxD, w_DxF):
    return x_BxTxD @ w_DxF


def _forward(x_BxTxD, w_DxF):
    return x_BxTxD @ w_DxF, (x_BxTxD, w_DxF)


def _backward(residuals, dy_BxTxF):
    x_BxTxD, w_DxF = residuals
    dx_BxTxD = dy_BxTxF @ w_DxF.T
    tokens = tuple(range(x_BxTxD.ndim - 1))
    dwT_FxD = jax.lax.dot_general(dy_BxTxF, x_BxTxD, ((tokens, tokens), ((), ())))
    return dx_BxTxD, jnp.swapaxes(jax.lax.optimization_barrier(dwT_FxD), 0, 1).astype(w_DxF.dtype)


_dense_cpu.defvjp(_forward, _backward)
