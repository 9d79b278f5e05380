import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.model.functional import ModelFns
from scalelab.model.transformer import ModelSpec

SPEC = ModelSpec.build(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, vocab=64, head_dim=8)


@pytest.mark.parametrize("spec", [SPEC, SPEC.replace(n_kv_heads=4, tied_embeddings=True)])
def test_changing_a_later_token_never_changes_earlier_logits(spec):
    fns = ModelFns(spec)
    params = fns.init(0)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, spec.vocab)
    base = fns.apply(params, tokens)
    for t in (3, 9, 15):
        changed = tokens.at[:, t].set((tokens[:, t] + 7) % spec.vocab)
        out = fns.apply(params, changed)
        np.testing.assert_array_equal(np.asarray(out[:, :t]), np.asarray(base[:, :t]))
        assert not np.allclose(out[:, t:], base[:, t:])  # the change does reach later positions


def test_every_parameter_has_logical_axes_of_its_rank():
    fns = ModelFns(SPEC)
    axes = jax.tree.leaves(fns.logical_axes, is_leaf=lambda x: isinstance(x, tuple))
    shapes = jax.tree.leaves(fns.shapes, is_leaf=lambda x: isinstance(x, tuple))
    assert len(axes) == len(shapes) > 10
    for a, s in zip(axes, shapes):
        assert len(a) == len(s)
        assert set(a) <= {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm"}


def test_tied_model_has_no_output_matrix_and_bf16_computes_in_bf16():
    tied = ModelFns(SPEC.replace(tied_embeddings=True))
    assert "lm_head" not in tied.shapes
    bf16 = ModelFns(SPEC.replace(compute_dtype="bf16"))
    params = bf16.init(0)
    assert jax.tree.leaves(params)[0].dtype == jnp.float32  # fp32 master weights
    assert bf16.apply(params, jnp.zeros((1, 4), jnp.int32)).dtype == jnp.bfloat16
