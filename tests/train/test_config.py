import os
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from scalelab.config import ConfigError, validate
from scalelab.model import ladder
from scalelab.train.build import build_run
from tests.helpers import REPO, compose_config


@pytest.mark.parametrize("override, key", [
    ("model.d_modle=64", "d_modle"),
    ("train.batchsize=8", "batchsize"),
    ("data.seq_len=long", "seq_len"),
    ("train.batch_size=1.5", "batch_size"),
    ("model=p9z", "p9z"),
])
def test_unknown_keys_and_wrong_types_fail_while_composing(override, key):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_config([override])
    assert key in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("override, key", [
    ("model.d_model=0", "model.d_model"),
    ("data.tokens=-5", "data.tokens"),
    ("data.seq_len=0", "data.seq_len"),
    ("train.batch_size=-8", "train.batch_size"),
    ("data.tokens=1000", "data.tokens"),  # less than one batch of 16 x 256
    ("train.grad_accum=3", "train.grad_accum"),
    ("model.n_kv_heads=2", "model.n_kv_heads"),  # p50k has 3 heads
    ("schedule=wsd schedule.decay=1.5".split()[1], "schedule.decay"),
    ("train.precision=fp8", "train.precision"),
    ("mesh.data=3", "mesh"),  # 3 does not match 8 devices
    ("mesh.tensor=8", "mesh.tensor"),  # p50k's 3 heads cannot split 8 ways
    ("model.attention=flash", "model.attention"),
    ("model.attention=cudnn", "model.attention"),  # a GPU kernel on CPU
    ("model.attention=splash", "model.attention"),  # a TPU kernel on CPU
    ("train.grad_accum=-1", "train.grad_accum"),
])
def test_bad_values_fail_before_compilation_naming_the_key(override, key, tmp_path):
    cfg = compose_config([override])
    with pytest.raises(ConfigError) as err:
        build_run(cfg, tmp_path)
    assert str(err.value).startswith(key)


@pytest.mark.parametrize("overrides, key", [
    (["train.batch_size=12"], "train.batch_size"),  # 8 devices
    (["train.batch_size=16", "train.grad_accum=4"], "train.grad_accum"),  # microbatches of 4
])
def test_a_batch_the_mesh_cannot_split_names_the_key(tmp_path, overrides, key):
    cfg = compose_config(overrides + ["data.seq_len=32", "data.tokens=4096"])
    with pytest.raises(ConfigError) as err:
        build_run(cfg, tmp_path)
    assert str(err.value).startswith(key)


def test_the_default_config_builds_the_run_it_describes(tmp_path):
    """The defaults build (pure: no files written) into p50k on the byte corpus, with whole steps."""
    cfg = compose_config([])
    validate(cfg)
    run = build_run(cfg, tmp_path / "never-written")
    assert not (tmp_path / "never-written").exists()
    assert run.counts.params == ladder.params_of("p50k", vocab=257, seq_len=cfg.data.seq_len)
    assert run.shape.vocab == 264 and run.shape.head_dim == cfg.model.d_model // cfg.model.n_heads
    assert run.plan.steps == int(cfg.data.tokens) // (cfg.train.batch_size * cfg.data.seq_len)
    assert run.hyper.schedule.total == run.plan.steps and run.hyper.schedule.peak == pytest.approx(cfg.model.lr)


def _train_cli(tmp_path, *overrides):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-c", "from scalelab.cli.entry import train; train()", f"hydra.run.dir={run_dir}",
           *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120), run_dir


def _train_main(tmp_path, monkeypatch, capsys, *overrides):
    """`scalelab-train`'s Hydra main (cli/train.py:main) called in this process, as the console script
    calls it: (exit code, stderr, run dir). Hydra's logging set-up is off (`none`): it would close and
    replace pytest's log handlers; the errors asserted on are printed, not logged."""
    from scalelab.cli.train import main

    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["scalelab-train", f"hydra.run.dir={run_dir}", "hydra/job_logging=none",
                                      "hydra/hydra_logging=none", *overrides])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err, run_dir


@pytest.mark.parametrize("override, key", [
    ("data.tokens=0", "data.tokens"),
    ("model.n_layrs=2", "n_layrs"),
    ("+train.batchsize=8", "train.batchsize"),  # what Hydra suggests after the typo above
    ("+model.d_modle=3", "model.d_modle"),
    ("init_from=/nonexistent/run", "init_from=/nonexistent/run"),  # fails after the run dir is locked
])
def test_train_main_exits_nonzero_naming_the_key_and_leaves_no_run_files(tmp_path, monkeypatch, capsys,
                                                                         override, key):
    code, stderr, run_dir = _train_main(tmp_path, monkeypatch, capsys, *override.split())
    assert code not in (0, None)
    assert key in stderr
    assert "Traceback" not in stderr
    assert not run_dir.exists()


def test_cli_exits_nonzero_naming_the_key_and_leaves_no_run_files(tmp_path):
    """The console script itself, in a process of its own, on the case that fails latest (after the run
    dir is locked and the model built); the other cases run in-process above."""
    proc, run_dir = _train_cli(tmp_path, "init_from=/nonexistent/run")
    assert proc.returncode == 2
    assert "init_from=/nonexistent/run" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize("override, key", [
    ("+train.batchsize=8", "train.batchsize: unknown key"),
    ("+model.d_modle=3", "model.d_modle: unknown key"),
    ("+mesh.rules.extra=data", None),  # an open group: any key
])
def test_keys_added_with_a_plus_are_refused_unless_the_group_is_open(override, key):
    cfg = compose_config([override])
    if key is None:
        validate(cfg)
        return
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(key) and "did you mean" in str(err.value)


def test_a_failed_start_prints_one_error_line_naming_the_data_path(tmp_path, monkeypatch, capsys):
    code, stderr, run_dir = _train_main(tmp_path, monkeypatch, capsys, "data=prepared",
                                        "data.path=/nonexistent/corpus")
    assert code == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: data.path: /nonexistent/corpus"), stderr
    assert not run_dir.exists()


def test_a_failed_start_never_removes_the_directory_of_a_live_run(tmp_path):
    from scalelab.cli.train import clean_failed_start
    from scalelab.train.store import RunLock

    (tmp_path / ".hydra").mkdir()
    with RunLock(tmp_path):  # a live run still compiling: nothing but Hydra's files and its lock yet
        clean_failed_start(tmp_path)
        assert (tmp_path / ".hydra").is_dir()
    clean_failed_start(tmp_path)
    assert not tmp_path.exists()


def test_a_run_recorded_before_a_key_existed_is_still_the_same_run():
    """Upgrading scalelab adds schema keys: a run dir whose config lacks one is not 'different' when the
    new config holds that key's default, and is when it holds another value."""
    from omegaconf import OmegaConf

    from scalelab.train.store import config_differences

    new = OmegaConf.to_container(compose_config(["model=p15k"]), resolve=True)
    old = {**new, "model": {k: v for k, v in new["model"].items() if k != "parametrization"}}
    assert config_differences(old, new) == []
    changed = {**new, "model": {**new["model"], "parametrization": "mup"}}
    assert config_differences(old, changed) == ["model.parametrization"]
    assert config_differences(new, {**new, "train": {**new["train"], "seed": 7}}) == ["train.seed"]


def test_with_the_same_lr_law_the_lr_it_gave_is_not_a_difference():
    from scalelab.train.store import config_differences

    def cfg(lr, law):
        return {"optimizer": {"lr": lr, "lr_law": law}, "train": {"seed": 0}}

    assert config_differences(cfg(0.0042, "law.json"), cfg("${model.lr}", "law.json")) == []
    assert config_differences(cfg(0.0042, "law.json"), cfg(0.0042, "other.json")) == ["optimizer.lr_law"]
    assert config_differences(cfg(0.0042, None), cfg(0.003, None)) == ["optimizer.lr"]
