"""The mixture-of-experts layer: its dispatch modes against a dense reference, causality, counts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab import ledger
from scalelab.config import ConfigError, validate
from scalelab.model import moe
from scalelab.model.functional import ModelFns
from scalelab.model.loss import training_loss
from scalelab.model.transformer import ModelSpec
from tests.helpers import TINY, compose_config

E, K, D, F, T = 8, 2, 32, 24, 32
MOE = dict(d_model=D, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, vocab=64, experts=E, top_k=K, d_expert=F)


def layer_inputs(seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    x_BxTxD = jax.random.normal(keys[0], (3, T, D))
    router_DxE = jax.random.normal(keys[1], (D, E))
    weights = [0.2 * jax.random.normal(keys[2], (E, D, F)), 0.2 * jax.random.normal(keys[3], (E, D, F)),
               0.2 * jax.random.normal(keys[4], (E, F, D))]
    return x_BxTxD, router_DxE, weights


def capacity_layer(x_BxTxD, router_DxE, weights, factor):
    _, experts_BxTxK, weights_BxTxK = moe.route(x_BxTxD, router_DxE, K)
    C = moe.capacity(T, K, E, factor)
    slot_BxTxK, kept_BxTxK = moe.slots(experts_BxTxK, E, C)
    x_BxExCxD = moe.gather_to_slots(x_BxTxD, slot_BxTxK, E * C).reshape(x_BxTxD.shape[0], E, C, D)
    y_BxExCxD = moe.swiglu_experts(x_BxExCxD, *weights)
    return moe.combine_from_slots(y_BxExCxD.reshape(x_BxTxD.shape[0], E * C, D), slot_BxTxK, weights_BxTxK,
                                  kept_BxTxK), kept_BxTxK


def relative(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def test_dropless_and_roomy_capacity_equal_every_expert_weighted():
    x_BxTxD, router_DxE, weights = layer_inputs()
    _, experts_BxTxK, weights_BxTxK = moe.route(x_BxTxD, router_DxE, K)
    reference = moe.every_expert(x_BxTxD, experts_BxTxK, weights_BxTxK, *weights)
    assert relative(moe.dropless(x_BxTxD, experts_BxTxK, weights_BxTxK, *weights), reference) < 1e-6
    roomy, kept = capacity_layer(x_BxTxD, router_DxE, weights, factor=E / K)  # C = T: nothing can drop
    assert bool(jnp.all(kept))
    assert relative(roomy, reference) < 1e-6
    tight, kept = capacity_layer(x_BxTxD, router_DxE, weights, factor=0.5)
    assert 0 < float(1 - kept.mean()) < 0.9  # a tight capacity drops some assignments, and the output moves
    assert relative(tight, reference) > 1e-3


def test_the_router_weights_are_the_renormalised_top_k():
    x_BxTxD, router_DxE, _ = layer_inputs(1)
    logits_BxTxE, experts_BxTxK, weights_BxTxK = moe.route(x_BxTxD, router_DxE, K)
    np.testing.assert_allclose(weights_BxTxK.sum(-1), 1.0, rtol=1e-6)
    best_BxT = jnp.argmax(logits_BxTxE, -1)
    assert bool(jnp.all(experts_BxTxK[..., 0] == best_BxT))


def test_capacity_dispatch_is_causal_a_prefix_computes_what_the_whole_sequence_does():
    spec = ModelSpec.build(seq_len=T, **MOE, capacity_factor=0.5)
    fns = ModelFns(spec)
    params = fns.init(0)
    tokens_BxT = jax.random.randint(jax.random.key(2), (2, T), 0, 64)
    stats: list = []
    whole = fns.apply(params, tokens_BxT, moe_stats=stats)
    assert float(stats[0]["dropped"]) > 0  # the check means something: tokens are dropped
    half = fns.apply(params, tokens_BxT[:, : T // 2])
    assert relative(half, whole[:, : T // 2]) < 1e-6


def test_training_loss_adds_the_weighted_auxiliary_losses_and_reports_loads():
    spec = ModelSpec.build(seq_len=T, **MOE, moe_every=2, moe_aux_loss=0.1, moe_z_loss=0.01)
    fns = ModelFns(spec)
    windows = jax.random.randint(jax.random.key(3), (2, T + 1), 0, 64)
    total, metrics = training_loss(fns, fns.init(0), windows)
    assert set(metrics) == {"train_loss", "moe_aux_loss", "moe_z_loss", "moe_max_load/1", "moe_dropped/1"}
    expected = metrics["train_loss"] + 0.1 * metrics["moe_aux_loss"] + 0.01 * metrics["moe_z_loss"]
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    assert float(metrics["moe_aux_loss"]) >= 1.0 - 1e-4  # E sum f P is at least 1 (f, P near uniform here)
    assert float(metrics["moe_max_load/1"]) >= 1.0


SHAPES = [
    ledger.Shape(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, vocab=264, seq_len=64,
                 experts=8, top_k=2, d_expert=64),
    ledger.Shape(d_model=64, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=128, vocab=264, seq_len=64,
                 experts=4, top_k=1, d_expert=128, shared_experts=1, moe_every=2),
]


def spec_of(shape: ledger.Shape, **fields) -> ModelSpec:
    return ModelSpec(shape=shape, **fields)


@pytest.mark.parametrize("shape", SHAPES)
def test_active_and_total_parameters_equal_counts_over_the_parameter_tree(shape):
    fns = ModelFns(spec_of(shape))
    leaves = jax.tree_util.tree_leaves_with_path(fns.shapes, is_leaf=lambda x: isinstance(x, tuple))
    axes = dict(jax.tree_util.tree_leaves_with_path(fns.logical_axes, is_leaf=lambda x: isinstance(x, tuple)))
    total = active = 0
    for path, size in leaves:
        count = math.prod(size)
        total += count
        if "vocab" in axes[path]:
            continue
        active += count * shape.top_k // shape.experts if "expert" in axes[path] else count
    assert total == ledger.total_params(shape)
    assert active == ledger.non_embedding_params(shape) == ledger.Ledger.of(shape).params_active
    assert ledger.total_params(shape) > ledger.non_embedding_params(shape) + ledger.embedding_params(shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_moe_training_flops_match_xla_cost_analysis(shape):
    """Capacity mode at capacity factor 1 (seq_len x top_k / E whole: no padding slots) computes the
    active experts' matmuls; XLA's count of the compiled forward+backward is within 5% of the ledger's."""
    fns = ModelFns(spec_of(shape, capacity_factor=1.0))
    batch = jnp.zeros((2, shape.seq_len + 1), jnp.int32)
    grad = jax.jit(jax.grad(lambda p, b: training_loss(fns, p, b)[0]))
    cost = grad.lower(fns.init(0), batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ours = ledger.flops_per_token(shape) * 2 * shape.seq_len
    assert ours == pytest.approx(cost["flops"], rel=0.05)
    assert ours <= cost["flops"]


@pytest.mark.parametrize("override, key", [
    ("model.moe.top_k=9", "model.moe.top_k"),
    ("model.moe.capacity_factor=0", "model.moe.capacity_factor"),
    ("mesh.expert=3", "mesh.expert"),
    ("model.moe.dispatch=sorted", "model.moe.dispatch"),
    ("model.moe.dispatch=dropless mesh.expert=2 mesh.impl=shard_map", "model.moe.dispatch"),
])
def test_bad_moe_configs_fail_before_compilation_naming_the_key(override, key):
    cfg = compose_config([*TINY, "model.moe.experts=8", *override.split()])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.key == key


def test_a_dense_model_refuses_an_expert_axis():
    with pytest.raises(ConfigError, match="^mesh.expert"):
        validate(compose_config([*TINY, "mesh.expert=2"]))


def test_muon_orthogonalises_each_expert_as_its_own_matrix():
    from scalelab.train.optim import muon_dims

    dims = muon_dims(ModelFns(ModelSpec.build(seq_len=T, **MOE)).logical_axes)["blocks"]["0"]["mlp"]
    assert (dims["w_gate"].reduction_axis, dims["w_gate"].output_axis) == ((1,), (2,))  # D in, F out; E a batch
    assert (dims["w_down"].reduction_axis, dims["w_down"].output_axis) == ((1,), (2,))  # F in, D out
    assert (dims["router"].reduction_axis, dims["router"].output_axis) == ((0,), (1,))
