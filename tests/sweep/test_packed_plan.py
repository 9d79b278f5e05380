"""How a packed sweep is sized: the ledger's memory estimate of a member's training step against
XLA's memory analysis of the compiled step, and the groups it makes of a device's memory."""

import jax
import numpy as np
import pytest

from scalelab.sweep.packed import member_memory, members_that_fit, plan_groups
from scalelab.train.build import build_run
from tests.helpers import compose_config


def built(tmp_path, overrides):
    return build_run(compose_config(overrides), tmp_path / "run", jax.local_devices()[:1])


def compiled_peak(run) -> int:
    """The peak bytes XLA plans for the run's train step: arguments + outputs + temporaries - donated."""
    state = jax.eval_shape(run.steps.init_state, 0)
    batch = jax.ShapeDtypeStruct((run.train.batch_size, run.shape.seq_len + 1), np.int32,
                                 sharding=run.steps.batch_sharding)
    m = run.steps.train_step.lower(state, batch, run.hyper_input()).compile().memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


@pytest.mark.parametrize("overrides", [
    ["model=p150k", "train.grad_accum=1", "data.seq_len=64", "train.batch_size=32"],
    ["model=p3m", "data.seq_len=512", "train.batch_size=8"],  # microbatches of 2 sequences, longer scores
], ids=["p150k", "p3m-seq512"])
def test_a_members_memory_estimate_is_within_25_percent_of_xlas(tmp_path, overrides):
    run = built(tmp_path, overrides)
    estimate, measured = member_memory(run), compiled_peak(run)
    print(f"{overrides[0]}: estimate {estimate.total / 2**20:.1f} MiB, XLA {measured / 2**20:.1f} MiB")
    assert abs(estimate.total / measured - 1) <= 0.25
    assert estimate.state > 0 and estimate.activations > estimate.grads


def test_groups_are_sized_from_the_device_memory_and_a_member_too_large_trains_alone(tmp_path):
    runs = [built(tmp_path / f"s{k}", ["model=p150k", "data.tokens=4096", f"train.seed={k}"]) for k in range(6)]
    one = member_memory(runs[0]).total
    assert [len(g) for g in plan_groups(runs, device_bytes=int(2.5 * one))] == [2, 2, 2]
    assert [len(g) for g in plan_groups(runs, device_bytes=one // 2)] == [1] * 6  # too large to share
    assert [len(g) for g in plan_groups(runs, max_members=4, device_bytes=one)] == [4, 2]  # a cap overrides
    assert members_that_fit(1, 10**12) == 64
