"""Sharded training gives the losses of one device: meshes, both step implementations, grad accum."""

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from scalelab.config import ConfigError, MeshConfig, OptimizerConfig, ScheduleConfig
from scalelab.model.functional import ModelFns
from scalelab.model.transformer import ModelSpec
from scalelab.train import mesh as meshlib
from scalelab.train import optim
from scalelab.train.step import build_steps, rules_key

SPEC = ModelSpec.build(d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=64, vocab=264, head_dim=8)
BATCH, SEQ, STEPS = 8, 16, 20
RULES = OmegaConf.to_container(OmegaConf.structured(MeshConfig).rules)


def mesh_cfg(data, fsdp, tensor, expert=1):
    return OmegaConf.create({"data": data, "fsdp": fsdp, "tensor": tensor, "expert": expert})


def batches():
    rng = np.random.default_rng(0)
    # a learnable stream (repeating pattern + noise) so that losses move a lot in 20 steps
    base = np.tile(np.arange(SEQ + 1) * 7 % 50, (BATCH, 1))
    return [np.where(rng.random(base.shape) < 0.1, rng.integers(0, 264, base.shape), base).astype(np.int32)
            for _ in range(STEPS)]


def train_losses(data, fsdp, tensor, impl="jit", grad_accum=1, devices=None, batch=BATCH, spec=SPEC, expert=1):
    mesh = meshlib.make_mesh(mesh_cfg(data, fsdp, tensor, expert), devices)
    hyper = optim.hyper_of(OmegaConf.structured(OptimizerConfig(lr=1e-2)), OmegaConf.structured(ScheduleConfig), STEPS)
    steps = build_steps(ModelFns(spec), mesh, rules_key(RULES), batch, grad_accum, impl=impl)
    hyper = jax.device_put(hyper.as_input(), steps.hyper_sharding)
    state = steps.init_state(0)
    losses = []
    for b in batches():
        state, metrics = steps.train_step(state, jax.device_put(b[:batch], steps.batch_sharding), hyper)
        losses.append(float(metrics["train_loss"]))
    return np.array(losses), state


@pytest.fixture(scope="module")
def reference():
    return train_losses(1, 1, 1, devices=jax.devices()[:1])[0]


@pytest.mark.parametrize("data, fsdp, tensor, impl", [
    (8, 1, 1, "jit"), (1, 8, 1, "jit"), (2, 2, 2, "jit"), (1, 2, 4, "jit"),
    (8, 1, 1, "shard_map"), (1, 8, 1, "shard_map"), (2, 4, 1, "shard_map"),
])
def test_meshes_match_one_device(reference, data, fsdp, tensor, impl):
    losses, state = train_losses(data, fsdp, tensor, impl)
    assert reference[-1] < reference[0] - 1.0  # the run really trains
    np.testing.assert_allclose(losses, reference, rtol=1e-4)
    wq = state["params"]["blocks"]["0"]["attn"]["wq"]
    if fsdp > 1:  # FSDP really shards parameters and optimizer state
        assert wq.sharding.shard_shape(wq.shape)[0] == SPEC.d_model // fsdp
        mu = state["opt_state"].mu["blocks"]["0"]["attn"]["wq"]
        assert mu.sharding.spec == wq.sharding.spec
    if tensor > 1:
        assert wq.sharding.shard_shape(wq.shape)[1] == SPEC.n_heads // tensor


def test_grad_accum_matches_the_whole_batch(reference):
    losses, _ = train_losses(8, 1, 1, grad_accum=1)
    accumulated, _ = train_losses(2, 1, 1, grad_accum=4, devices=jax.devices()[:2])
    np.testing.assert_allclose(accumulated, losses, rtol=1e-4)
    np.testing.assert_allclose(accumulated, reference, rtol=1e-4)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_policies_give_the_same_losses(reference, remat):
    spec = SPEC.replace(remat=remat)
    losses, _ = train_losses(1, 1, 1, devices=jax.devices()[:1], spec=spec)
    np.testing.assert_allclose(losses, reference, rtol=1e-5)


@pytest.mark.parametrize("cfg, key, words", [
    ((3, 1, 1), "mesh", "3 devices, but 8"),
    ((-1, -1, 1), "mesh.fsdp", "only one mesh axis"),
    ((-1, 3, 1), "mesh.data", "cannot fill"),
])
def test_bad_mesh_shapes_are_named(cfg, key, words):
    with pytest.raises(ConfigError) as err:
        meshlib.make_mesh(mesh_cfg(*cfg))
    assert str(err.value).startswith(key) and words in str(err.value)


def test_indivisible_dimensions_name_the_axis():
    with pytest.raises(ConfigError, match=r"^mesh.tensor: parameter .*heads.* split 8 ways"):
        train_losses(1, 1, 8)  # 4 heads over 8
    with pytest.raises(ConfigError, match=r"^train.batch_size: a batch of 4 .* 8 ways"):
        train_losses(8, 1, 1, batch=4)
    with pytest.raises(ConfigError, match=r"^mesh.impl"):
        train_losses(2, 1, 4, impl="shard_map")


MOE_SPEC = SPEC.replace(experts=8, top_k=2, d_expert=32, seq_len=SEQ)


@pytest.fixture(scope="module")
def moe_reference():
    return train_losses(1, 1, 1, devices=jax.devices()[:1], spec=MOE_SPEC)[0]


@pytest.mark.parametrize("data, fsdp, impl", [(2, 1, "jit"), (1, 2, "jit"), (2, 1, "shard_map"), (1, 2, "shard_map")])
def test_expert_parallel_moe_matches_one_device(moe_reference, data, fsdp, impl):
    """Experts split 4 ways (tokens sent to their experts' devices and back), with data or FSDP of 2,
    by GSPMD (jit) or by the step's own all-to-all (shard_map)."""
    losses, state = train_losses(data, fsdp, 1, spec=MOE_SPEC, expert=4, impl=impl)
    assert moe_reference[-1] < moe_reference[0] - 1.0
    np.testing.assert_allclose(losses, moe_reference, rtol=1e-5)
    w_up = state["params"]["blocks"]["0"]["mlp"]["w_up"]
    assert w_up.sharding.shard_shape(w_up.shape)[0] == 8 // 4  # each device holds 2 of the 8 experts
    text = state_step_text(data, fsdp, impl)
    assert "all-to-all" in text  # tokens travel to their experts, not the experts to the tokens


def test_data_parallel_shard_map_moe_balances_the_whole_batch(moe_reference):
    """The router's statistics (and the aux loss made of them) are the global batch's, not each device's."""
    losses, _ = train_losses(8, 1, 1, spec=MOE_SPEC, impl="shard_map")
    np.testing.assert_allclose(losses, moe_reference, rtol=1e-5)


def test_shard_map_refuses_dropless_experts_over_devices():
    with pytest.raises(ConfigError, match=r"^model.moe.dispatch"):
        train_losses(2, 1, 1, spec=MOE_SPEC.replace(moe_dispatch="dropless"), expert=4, impl="shard_map")


def state_step_text(data, fsdp, impl="jit") -> str:
    """The optimized HLO of the expert-parallel step (what collectives move the tokens)."""
    mesh = meshlib.make_mesh(mesh_cfg(data, fsdp, 1, 4))
    steps = build_steps(ModelFns(MOE_SPEC), mesh, rules_key(RULES), BATCH, 1, impl=impl)
    hyper = optim.hyper_of(OmegaConf.structured(OptimizerConfig(lr=1e-2)), OmegaConf.structured(ScheduleConfig), STEPS)
    state = jax.eval_shape(steps.init_state, 0)
    batch = jax.ShapeDtypeStruct((BATCH, SEQ + 1), np.int32)
    return steps.train_step.lower(state, batch, hyper.as_input()).compile().as_text()
