"""optimizer.lr_law: the law file sets the peak lr a run uses, and every misuse names the key."""

from __future__ import annotations

import json
import warnings

import pytest

from scalelab.config import ConfigError
from scalelab.lr_law_file import LrLaw, write_law
from scalelab.train.build import build_run
from scalelab.train.session import base_summary
from tests.helpers import TINY, compose_config


def _law(tmp_path, **kw):
    law = LrLaw(c=kw.pop("c", 0.5), p=kw.pop("p", -0.3), q=kw.pop("q", 0.05), r=kw.pop("r", None),
                validity=kw.pop("validity", {"N": (1e4, 1e5), "D": (1e3, 1e5)}))
    return write_law(law, tmp_path / "law.json"), law


def test_the_law_sets_the_lr_the_run_uses_and_records(tmp_path):
    path, law = _law(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the fitted range: no extrapolation warning
        run = build_run(compose_config([*TINY, f"optimizer.lr_law={path}"]), tmp_path / "run")
    expected = law.lr(run.counts.params, run.tokens)
    assert run.hyper.schedule.peak == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(0.01)  # not TINY's model.lr
    assert run.config["optimizer"]["lr"] == pytest.approx(expected)
    summary = base_summary(run)
    assert summary["lr"] == pytest.approx(expected, rel=1e-6) and summary["lr_law"] == str(path)
    json.dumps(summary["config"])


def test_a_batch_law_reads_the_batch_in_tokens(tmp_path):
    path, law = _law(tmp_path, r=0.5, validity={})
    run = build_run(compose_config([*TINY, f"optimizer.lr_law={path}"]), tmp_path / "run")
    assert run.hyper.schedule.peak == pytest.approx(law.lr(run.counts.params, run.tokens, 8 * 32), rel=1e-6)


def test_extrapolating_warns_but_builds(tmp_path):
    path, _ = _law(tmp_path, validity={"N": (1e7, 1e8), "D": (1e3, 1e5)})
    with pytest.warns(UserWarning, match="extrapolates: N="):
        build_run(compose_config([*TINY, f"optimizer.lr_law={path}"]), tmp_path / "run")


def test_lr_and_lr_law_together_is_an_error_naming_both(tmp_path):
    path, _ = _law(tmp_path)
    with pytest.raises(ConfigError) as err:
        build_run(compose_config([*TINY, f"optimizer.lr_law={path}", "optimizer.lr=0.002"]), tmp_path / "run")
    assert err.value.key == "optimizer.lr_law" and "optimizer.lr=" in str(err.value)


@pytest.mark.parametrize("content, says", [(None, "no such file"), ("{not json", "JSON"),
                                           ('{"kind": "other"}', "not a learning-rate law"),
                                           ('{"kind": "scalelab.lr_law", "c": -1, "p": 0, "q": 0}', "c > 0")])
def test_a_missing_or_malformed_law_file_names_the_key_and_path(tmp_path, content, says):
    path = tmp_path / "law.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as err:
        build_run(compose_config([*TINY, f"optimizer.lr_law={path}"]), tmp_path / "run")
    assert str(err.value).startswith("optimizer.lr_law") and str(path) in str(err.value) and says in str(err.value)


def test_lr_scale_multiplies_the_law_lr_and_a_plain_lr_and_resumes(tmp_path):
    """optimizer.lr_scale: the lr check of a rung (0.5x, 2x the lr a run would get) without knowing it."""
    from omegaconf import OmegaConf

    from scalelab.train.store import config_differences

    path, law = _law(tmp_path)
    run = build_run(compose_config([*TINY, f"optimizer.lr_law={path}", "optimizer.lr_scale=0.5"]), tmp_path / "a")
    assert run.hyper.schedule.peak == pytest.approx(0.5 * law.lr(run.counts.params, run.tokens), rel=1e-6)
    composed = compose_config([*TINY, "optimizer.lr_scale=2"])
    run = build_run(composed, tmp_path / "b")
    assert run.hyper.schedule.peak == pytest.approx(2 * composed.optimizer.lr, rel=1e-6)
    # the recorded lr is the scaled one; the same command again is the same run (it resumes), another scale is not
    recorded = run.config
    assert config_differences(recorded, OmegaConf.to_container(composed, resolve=True)) == []
    other = OmegaConf.to_container(compose_config([*TINY, "optimizer.lr_scale=0.5"]), resolve=True)
    assert "optimizer.lr_scale" in config_differences(recorded, other)
    with pytest.raises(ConfigError) as err:
        build_run(compose_config([*TINY, "optimizer.lr_scale=0"]), tmp_path / "c")
    assert err.value.key == "optimizer.lr_scale"
