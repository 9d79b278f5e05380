"""`scalelab bench` runs end to end and its JSON holds what the table prints (not a timing test)."""

import json
import os
import subprocess
import sys

import pytest

from scalelab import ledger
from scalelab.model import ladder
from tests.helpers import REPO


@pytest.mark.slow
def test_bench_writes_its_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.run([sys.executable, "-c", "from scalelab.cli.entry import cli; cli()", "bench", "--shapes", "p15k",
                           "--steps", "2", "--no-extras", "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "p15k" in proc.stdout and "MFU" in proc.stdout
    result = json.loads(out.read_text())
    (row,) = result["results"]
    assert row["attention"] == "blockwise" and row["grad_accum"] == 4  # the CPU defaults: 4 x 256 tokens
    assert 0 < row["mfu"] < 1 and row["tokens_per_second"] > 0 and row["peak_flops"] == result["peak_flops"]
    # the ledger's count for p15k at the bench's sequence (its own tests hold it to XLA's count)
    r = ladder.rung("p15k")
    shape = ledger.Shape(d_model=r["d_model"], n_layers=r["n_layers"], n_heads=r["n_heads"], n_kv_heads=r["n_kv_heads"],
                         d_ff=r["d_ff"], vocab=256, seq_len=256)
    assert row["flops_per_token"] == ledger.flops_per_token(shape)
    assert row["tokens_per_second"] == pytest.approx(16 * 256 / row["step_seconds"])
