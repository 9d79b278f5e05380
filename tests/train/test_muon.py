"""optimizer=muon: Muon on the hidden matrices, AdamW on the rest; packed, resumed, validated."""

import functools
import json
import shutil

import jax
import numpy as np
import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from scalelab.config import ConfigError, MeshConfig, OptimizerConfig, ScheduleConfig, validate
from scalelab.model.functional import ModelFns
from scalelab.model.transformer import ModelSpec
from scalelab.sweep.packed import Job, run_jobs
from scalelab.train import mesh as meshlib
from scalelab.train import optim
from scalelab.train.build import build_run
from scalelab.train.packed import group_key
from scalelab.train.run import fit, run
from scalelab.train.runlog import read_metrics, read_summary
from scalelab.train.step import build_steps, rules_key
from tests.helpers import TINY, compose_config

PACKED = TINY + ["data.tokens=4096", "optimizer=muon"]  # 16 steps of a tiny model


def train_losses(run_dir):
    return np.array([r["train_loss"] for r in read_metrics(run_dir)])


def test_muon_trains(tmp_path):
    fit(build_run(compose_config(TINY + ["data.tokens=6144", "optimizer=muon"]), tmp_path, jax.devices()[:1]))
    losses = train_losses(tmp_path)  # 24 steps
    assert len(losses) == 24 and losses[-3:].mean() < losses[0] - 1.5  # from ln(vocab) ~ 5.6 down
    assert read_summary(tmp_path)["config"]["optimizer"]["name"] == "muon"


def one_update(name: str) -> dict:
    """Each parameter's change in the first step of optimizer `name` (no weight decay)."""
    mesh_cfg = OmegaConf.structured(MeshConfig)
    fns = ModelFns(ModelSpec.build(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64, vocab=64, head_dim=16))
    steps = build_steps(fns, meshlib.make_mesh(mesh_cfg, jax.devices()[:1]),
                        rules_key(OmegaConf.to_container(mesh_cfg.rules)), 8, 1, optimizer=name)
    hyper = optim.hyper_of(OmegaConf.structured(OptimizerConfig(name=name, lr=1e-2, weight_decay=0.0)),
                           OmegaConf.structured(ScheduleConfig(name="constant", warmup=0)), 10)
    state = steps.init_state(0)
    before = jax.device_get(state["params"])
    batch = np.random.default_rng(0).integers(0, 64, (8, 33)).astype(np.int32)
    new, _ = steps.train_step(state, batch, hyper.as_input())
    return jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a), before, jax.device_get(new["params"]))


def test_one_muon_step_orthogonalizes_the_matrices_and_leaves_the_rest_to_adamw():
    muon, adamw = one_update("muon"), one_update("adamw")
    spread = lambda u: (lambda s: s.max() / s.min())(np.linalg.svd(u, compute_uv=False))
    for name, u in [("w_up", muon["blocks"]["0"]["mlp"]["w_up"]),
                    ("wq", muon["blocks"]["0"]["attn"]["wq"].reshape(32, -1))]:  # embed x heads*head_dim
        assert spread(u) < 2.0, name  # Newton-Schulz: every singular value near one
    assert spread(adamw["blocks"]["0"]["mlp"]["w_up"]) > 4.0
    rms = np.sqrt(np.mean(muon["blocks"]["0"]["mlp"]["w_up"] ** 2))
    assert 0.5 * 0.2 * 1e-2 < rms < 1.2 * 0.2 * 1e-2  # optimizer.muon_rms x lr, whatever the shape
    for path in (("embed",), ("lm_head",), ("final_norm", "scale"), ("blocks", "0", "attn_norm", "scale")):
        get = functools.partial(functools.reduce, lambda t, k: t[k], path)
        np.testing.assert_array_equal(get(muon), get(adamw), err_msg="/".join(path))  # AdamW's step
    for path in (("blocks", "0", "mlp", "w_up"), ("blocks", "0", "attn", "wo")):
        get = functools.partial(functools.reduce, lambda t, k: t[k], path)
        assert not np.allclose(get(muon), get(adamw), rtol=0.1), "/".join(path)  # Muon's step


def test_muon_dims_pick_the_hidden_matrices():
    fns = ModelFns(ModelSpec.build(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, vocab=64, head_dim=8))
    dims = optim.muon_dims(fns.logical_axes)
    attn, mlp = dims["blocks"]["0"]["attn"], dims["blocks"]["0"]["mlp"]
    assert attn["wq"] == attn["wk"] == optim.MuonDimensionNumbers((0,), (1, 2))
    assert attn["wo"] == optim.MuonDimensionNumbers((0, 1), (2,))  # heads*head_dim x embed
    assert mlp["w_down"] == optim.MuonDimensionNumbers((0,), (1,))
    assert mlp["w_up"] == mlp["w_gate"] == optim.MuonDimensionNumbers((0,), (1,))
    assert dims["embed"] is dims["lm_head"] is dims["final_norm"]["scale"] is None


def test_a_packed_muon_sweep_matches_each_run_alone_and_never_packs_with_adamw(tmp_path):
    lrs = (3e-3, 1e-2)
    jobs = run_jobs([Job(cfg=compose_config(PACKED + [f"optimizer.lr={lr}"]), run_dir=tmp_path / "packed" / f"lr{lr}")
                     for lr in lrs])
    assert all(j.error is None for j in jobs), [j.error for j in jobs]
    for lr in lrs:
        solo_dir = tmp_path / f"solo{lr}"
        solo = build_run(compose_config(PACKED + [f"optimizer.lr={lr}"]), solo_dir, jax.devices()[:1])
        fit(solo)
        packed_dir = tmp_path / "packed" / f"lr{lr}"
        np.testing.assert_allclose(train_losses(packed_dir), train_losses(solo_dir), rtol=1e-4)
        assert len(read_summary(packed_dir)["packed_with"]) == 2
    runs = [build_run(compose_config(TINY + extra), tmp_path / str(i), jax.devices()[:1]) for i, extra in
            enumerate([["optimizer=muon", "optimizer.lr=1e-3"], ["optimizer=muon", "optimizer.muon_rms=0.3"],
                       ["optimizer=adamw"]])]
    assert group_key(runs[0]) == group_key(runs[1]) != group_key(runs[2])


def test_a_bad_optimizer_fails_naming_the_key():
    with pytest.raises(MissingConfigException, match="optimizer"):
        compose_config(TINY + ["optimizer=sgd"])
    for extra, key in [("optimizer.name=sgd", "optimizer.name"), ("optimizer.muon_momentum=1.0", "optimizer.muon_momentum"),
                       ("optimizer.muon_rms=0", "optimizer.muon_rms")]:
        with pytest.raises(ConfigError, match=key):
            validate(compose_config(TINY + [extra]))
    with pytest.raises(ConfigError, match="optimizer.name"):
        validate(compose_config(TINY + ["optimizer=muon", "model.parametrization=mup"]))


def test_a_resumed_muon_run_restores_its_momentum_and_matches_the_straight_run(tmp_path):
    overrides = PACKED + ["checkpoint.every=8", "checkpoint.keep=3"]
    run(compose_config(overrides), tmp_path)
    straight = train_losses(tmp_path)
    # leave what a crash after the step-8 checkpoint leaves: no final checkpoint, status running
    shutil.rmtree(tmp_path / "checkpoints" / "16")
    summary = read_summary(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    run(compose_config(overrides), tmp_path)
    assert read_summary(tmp_path)["resumed_from"] == [8]
    # bitwise: steps 9-16 would differ if Muon's momentum (or Adam's moments) restarted from zero
    np.testing.assert_array_equal(train_losses(tmp_path), straight)


def test_muon_state_is_sharded_like_its_parameters():
    """Under FSDP, Muon's momentum (and the AdamW moments of the rest) shard as their parameters do."""
    mesh_cfg = OmegaConf.structured(MeshConfig(data=1, fsdp=2))
    fns = ModelFns(ModelSpec.build(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64, vocab=64, head_dim=16))
    steps = build_steps(fns, meshlib.make_mesh(mesh_cfg, jax.devices()[:2]),
                        rules_key(OmegaConf.to_container(mesh_cfg.rules)), 8, 1, optimizer="muon")
    params = steps.state_shardings["params"]
    flat = jax.tree_util.tree_flatten_with_path(steps.state_shardings["opt_state"])[0]
    keys = lambda path: [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    moments = {tuple(keys(path)): sh for path, sh in flat if keys(path)[-1:] in (["w_up"], ["embed"])}
    assert set(moments) == {("muon", "blocks", "0", "mlp", "w_up"), ("adam", "embed")}, moments
    for (_label, *path), sharding in moments.items():
        assert sharding == functools.reduce(lambda t, k: t[k], path, params) and "fsdp" in str(sharding.spec)
