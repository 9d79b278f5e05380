"""µP: the coordinate check, parameter groups, sharded and packed training, and config checks."""

import jax
import numpy as np
import pytest

from scalelab.bench.coord_check import Settings, coord_check, figure
from scalelab.config import ConfigError, validate
from scalelab.model.functional import ModelFns
from scalelab.model.parametrization import group_of
from scalelab.train.build import build_run
from tests.helpers import TINY, compose_config
from tests.train.test_mesh import SPEC, train_losses

MUP_SPEC = SPEC.replace(parametrization="mup", mup_base_width=16)  # d_model 32: r = 2


@pytest.fixture(scope="module")
def check():
    # two widths a factor 4 apart, one layer, 4 steps: enough for the slopes, in well under a minute
    return coord_check(Settings(widths=(32, 128), steps=4, n_layers=1, seq_len=32))


def test_activations_do_not_grow_with_width_under_mup(check):
    mup, standard = check["slopes"]["mup"], check["slopes"]["standard"]
    assert set(mup) == {"embedding", "block0", "logits"}
    assert all(abs(s) < 0.15 for s in mup.values()), mup  # measured: |slope| <= 0.06 (NOTES.md)
    assert standard["logits"] > 0.3, standard  # measured: 0.7-0.9
    assert standard["block0"] > 0.3, standard
    # at the base width (32) mup computes what standard does: same init, scale, multipliers and lr
    np.testing.assert_allclose(check["losses"]["mup"]["32"], check["losses"]["standard"]["32"], rtol=1e-6)


def test_coord_check_figure_and_numbers(check, tmp_path):
    assert list(check["rms"]["mup"]) == ["embedding", "block0", "logits"]  # in the network's order
    assert np.shape(check["rms"]["mup"]["logits"]) == (5, 2)  # steps 0..4 x widths
    fig = figure(check)
    assert len(fig.axes) == 2 * 3  # a row per parametrization, a panel per layer
    fig.savefig(tmp_path / "coord_check.png", dpi=50)
    assert (tmp_path / "coord_check.png").stat().st_size > 5_000


def test_parameter_groups_and_their_learning_rates():
    fns = ModelFns(MUP_SPEC)
    m = fns.lr_multipliers
    assert m["blocks"]["0"]["attn"]["wq"] == m["blocks"]["0"]["mlp"]["w_down"] == 0.5  # hidden: base / width
    assert m["embed"] == m["lm_head"] == m["final_norm"]["scale"] == m["blocks"]["1"]["attn_norm"]["scale"] == 1.0
    assert [group_of(a) for a in (("vocab", "embed"), ("embed", "vocab"), ("norm",), ("mlp", "embed"))] == [
        "embedding", "output", "vector", "hidden"]
    assert ModelFns(SPEC).lr_multipliers is None  # standard: one learning rate, the update as before
    # hidden init std shrinks by sqrt(r); embedding and output keep init_std
    assert fns.init_stds["blocks"]["0"]["attn"]["wq"] == pytest.approx(0.02 / 2**0.5)
    assert fns.init_stds["embed"] == fns.init_stds["lm_head"] == 0.02


def test_mup_at_its_base_width_initialises_as_standard():
    base = SPEC.replace(parametrization="mup", mup_base_width=SPEC.d_model)
    same = jax.tree.map(np.array_equal, ModelFns(base).init(0), ModelFns(SPEC).init(0))
    assert all(jax.tree.leaves(same))


def test_mup_attention_scale_is_standards_at_the_base_head_dim():
    from scalelab.model.parametrization import query_multiplier
    assert query_multiplier(SPEC) is None  # standard: the kernels' 1/sqrt(head_dim) alone
    assert query_multiplier(MUP_SPEC) == 1.0  # heads of one size: the scale stays standard's
    # heads that widen with the model: scores scale as sqrt(base head_dim)/head_dim
    wide = MUP_SPEC.replace(mup_base_head_dim=MUP_SPEC.head_dim // 4)
    assert query_multiplier(wide) == pytest.approx(0.5)


@pytest.mark.parametrize("impl", ["jit", pytest.param("shard_map", marks=pytest.mark.slow)])
def test_mup_under_fsdp_matches_one_device(impl):
    reference, _ = train_losses(1, 1, 1, devices=jax.devices()[:1], spec=MUP_SPEC)
    losses, state = train_losses(1, 8, 1, impl, spec=MUP_SPEC)
    assert reference[-1] < reference[0] - 1.0  # it trains
    np.testing.assert_allclose(losses, reference, rtol=1e-4)
    wq = state["params"]["blocks"]["0"]["attn"]["wq"]
    assert wq.sharding.shard_shape(wq.shape)[0] == SPEC.d_model // 8


@pytest.mark.parametrize("override, key", [
    ("model.parametrization=foo", "model.parametrization"),
    ("model.mup_base_width=0", "model.mup_base_width"),
    ("model.mup_base_width=-64", "model.mup_base_width"),
    ("model.mup_base_head_dim=-8", "model.mup_base_head_dim"),
])
def test_bad_values_fail_before_anything_compiles(override, key, tmp_path):
    cfg = compose_config(TINY + [override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.key == key and str(err.value).startswith(key)
    with pytest.raises(ConfigError, match=key):
        build_run(cfg, tmp_path / "run")


@pytest.mark.slow
def test_mup_members_of_a_packed_group_match_their_solo_runs(tmp_path):
    from scalelab.sweep.packed import Job, run_jobs
    from scalelab.train.run import fit
    from scalelab.train.runlog import read_metrics

    mup = TINY + ["data.tokens=2048", "model.parametrization=mup", "model.mup_base_width=16"]
    lrs = (3e-3, 3e-2)
    jobs = run_jobs([Job(cfg=compose_config(mup + [f"optimizer.lr={lr}"]), run_dir=tmp_path / "packed" / f"lr{lr}")
                     for lr in lrs])
    assert all(j.error is None for j in jobs), [j.error for j in jobs]
    losses = lambda d: np.array([r["train_loss"] for r in read_metrics(d)])  # noqa: E731
    for lr in lrs:
        fit(build_run(compose_config(mup + [f"optimizer.lr={lr}"]), tmp_path / f"solo{lr}", jax.devices()[:1]))
        np.testing.assert_allclose(losses(tmp_path / "packed" / f"lr{lr}"), losses(tmp_path / f"solo{lr}"), rtol=1e-4)


def test_mup_models_are_refused_by_the_hugging_face_export():
    from scalelab.interop.hf.convert import HFConfigError, hf_config

    with pytest.raises(HFConfigError, match="model.parametrization"):
        hf_config(MUP_SPEC)
    assert hf_config(SPEC)["hidden_size"] == SPEC.d_model
