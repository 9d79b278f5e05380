"""Where a cluster's layout meets the files and the data: batch rows per process, file modes."""

import os
import stat

import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scalelab.config import ConfigError
from scalelab.data.pipeline import check_batch_layout, process_rows
from scalelab.train.runlog import write_json_atomic


def rows_map(*blocks):
    """An addressable_devices_indices_map whose devices hold these (start, stop) row blocks."""
    return {f"device{i}": (slice(a, b), slice(None)) for i, (a, b) in enumerate(blocks)}


def test_the_contiguous_block_of_each_process_is_accepted():
    assert process_rows(16, 1, 2) == range(8, 16)
    check_batch_layout(rows_map((8, 12), (12, 16)), 16, 1, 2)
    check_batch_layout(rows_map((0, 16)), 16, 0, 1)


@pytest.mark.parametrize("blocks, held", [
    ([(0, 4), (8, 12)], "0-3, 8-11"),  # interleaved over the processes (fsdp spanning hosts)
    ([(0, 16), (0, 16)], "0-15"),  # the batch replicated across processes (only tensor spans hosts)
])
def test_a_batch_laid_over_the_processes_otherwise_is_refused(blocks, held):
    with pytest.raises(ConfigError) as err:
        check_batch_layout(rows_map(*blocks), 16, 0, 2, {"data": 1, "fsdp": 4, "tensor": 1})
    message = str(err.value)
    assert message.startswith("mesh:") and f"rows {held}" in message and "rows 0-7" in message


def test_the_real_batch_sharding_of_one_process_passes():
    import jax
    import numpy as np

    mesh = Mesh(np.asarray(jax.devices()).reshape(2, 4), ("data", "fsdp"))
    sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
    check_batch_layout(sharding.addressable_devices_indices_map((16, 1)), 16, 0, 1)


def test_run_files_are_group_readable(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "summary.json", {"status": "running"})
        os.umask(0o027)
        write_json_atomic(tmp_path / "plan.json", {"jobs": []})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "plan.json").stat().st_mode) == 0o640


def test_a_runs_summary_has_the_mode_open_would_give(tiny_run):
    run_dir, _ = tiny_run
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((run_dir / "summary.json").stat().st_mode) == 0o666 & ~umask
