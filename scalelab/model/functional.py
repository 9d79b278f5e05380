"""The model as pure functions of a parameter dict: init, apply, logical axes, shapes.

Training, evaluation, generation and export all hold parameters as a nested dict of arrays with
string keys; `ModelFns` turns that dict back into the NNX module inside a traced function.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from scalelab.model import parametrization
from scalelab.model.transformer import ModelSpec, Transformer


def _str_keys(tree):
    if isinstance(tree, dict):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _int_keys(tree):
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
    return tree


class ModelFns:
    """The model as pure functions of a parameter dict: init, apply, and its logical axes."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        abstract = nnx.eval_shape(lambda: Transformer(spec, nnx.Rngs(0)))
        self.graphdef, self._abstract_state = nnx.split(abstract)
        is_var = lambda x: isinstance(x, nnx.Variable)
        axes = jax.tree.map(lambda v: tuple(v.get_metadata()["logical_axes"]), self._abstract_state, is_leaf=is_var)
        self.logical_axes = _str_keys(nnx.to_pure_dict(axes))
        self.shapes = _str_keys(nnx.to_pure_dict(jax.tree.map(lambda v: tuple(v.get_value().shape), self._abstract_state, is_leaf=is_var)))
        self.dtypes = _str_keys(nnx.to_pure_dict(jax.tree.map(lambda v: v.get_value().dtype, self._abstract_state, is_leaf=is_var)))
        # None for norm scales (initialised to one)
        self.init_stds = _str_keys(nnx.to_pure_dict(jax.tree.map(lambda v: v.get_metadata().get("init_std"),
                                                                 self._abstract_state, is_leaf=is_var)))
        # each parameter's Adam learning-rate multiplier (None: one learning rate for all)
        self.lr_multipliers = parametrization.lr_multipliers(spec, self.logical_axes)

    def init(self, seed) -> dict:
        """Initial parameters: normal(0, init_std) matrices drawn from one stream, norm scales at 1."""
        key = seed if jax.dtypes.issubdtype(jnp.asarray(seed).dtype, jax.dtypes.prng_key) else jax.random.key(seed)
        paths_shapes = jax.tree_util.tree_leaves_with_path(self.shapes, is_leaf=lambda x: isinstance(x, tuple))
        stds = jax.tree.leaves(self.init_stds, is_leaf=lambda x: x is None)
        dtypes = jax.tree.leaves(self.dtypes)
        sizes = [math.prod(shape) for _, shape in paths_shapes]
        noise = jax.random.normal(key, (sum(s for s, std in zip(sizes, stds) if std is not None),), jnp.float32)
        values, offset = [], 0
        for (_, shape), size, std, dtype in zip(paths_shapes, sizes, stds, dtypes):
            if std is None:
                values.append(jnp.ones(shape, dtype))
            else:
                values.append((std * noise[offset:offset + size].reshape(shape)).astype(dtype))
                offset += size
        treedef = jax.tree.structure(self.shapes, is_leaf=lambda x: isinstance(x, tuple))
        return jax.tree.unflatten(treedef, values)

    def module(self, params: dict) -> Transformer:
        state = jax.tree.map(lambda x: x, self._abstract_state)
        nnx.replace_by_pure_dict(state, _int_keys(params))
        return nnx.merge(self.graphdef, state)

    def apply(self, params: dict, tokens_BxT, positions_BxT=None, probes: dict | None = None,
              moe_stats: list | None = None):
        return self.module(params)(tokens_BxT, positions_BxT, probes=probes, moe_stats=moe_stats)


@functools.lru_cache(maxsize=64)
def model_fns(spec: ModelSpec) -> ModelFns:
    """The one `ModelFns` of a spec in this process, so that steps built for it are shared."""
    return ModelFns(spec)
