import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from scalelab.config import ScheduleConfig
from scalelab.train import optim


def lrs(name, total=100, **kw):
    cfg = OmegaConf.structured(ScheduleConfig(name=name, **kw))
    sched = optim.schedule_values(cfg, 1e-2, total)
    return np.array([float(optim.learning_rate(s, sched)) for s in range(total)])


def test_warmup_then_cosine_to_the_final_ratio():
    lr = lrs("cosine", warmup=0.1, final_lr_ratio=0.1)
    np.testing.assert_allclose(lr[:10], 1e-2 * np.arange(1, 11) / 10, rtol=1e-6)
    assert lr[10] == pytest.approx(1e-2, rel=1e-6) and lr[-1] == pytest.approx(1e-3, rel=0.01)
    assert np.all(np.diff(lr[10:]) <= 0)


def test_wsd_holds_the_peak_then_decays_linearly():
    lr = lrs("wsd", warmup=5, decay=0.2, final_lr_ratio=0.0)
    assert np.allclose(lr[5:80], 1e-2)
    np.testing.assert_allclose(lr[80:], 1e-2 * (1 - np.arange(20) / 20), rtol=1e-5, atol=1e-9)
    assert lrs("constant", warmup=0)[-1] == pytest.approx(1e-2)


def lowered_step(total_steps: int, name: str = "cosine", lr: float = 1e-3) -> str:
    from scalelab.config import MeshConfig, OptimizerConfig
    from scalelab.model.functional import ModelFns
    from scalelab.model.transformer import ModelSpec
    from scalelab.train import mesh as meshlib
    from scalelab.train.step import build_steps, rules_key

    mesh_cfg = OmegaConf.structured(MeshConfig)
    hyper = optim.hyper_of(OmegaConf.structured(OptimizerConfig(lr=lr)), OmegaConf.structured(ScheduleConfig(name=name)),
                           total_steps)
    fns = ModelFns(ModelSpec.build(d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32, vocab=64, head_dim=8))
    steps = build_steps(fns, meshlib.make_mesh(mesh_cfg), rules_key(OmegaConf.to_container(mesh_cfg.rules)), 8, 1)
    state = jax.eval_shape(steps.init_state, 0)
    batch = jax.ShapeDtypeStruct((8, 9), np.int32, sharding=steps.batch_sharding)
    return steps.train_step.lower(state, batch, hyper.as_input()).as_text()


def test_runs_of_different_lengths_and_hyperparameters_share_one_compiled_step():
    """Schedule and optimizer numbers are inputs of the step: runs of other lengths, learning rates
    and schedule kinds lower to the same program (one cache entry), and the numbers still matter."""
    assert lowered_step(100) == lowered_step(5000, "wsd", lr=3e-2)
    assert not np.allclose(lrs("cosine", warmup=0), lrs("wsd", warmup=0))
