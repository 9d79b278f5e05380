"""`scalelab bench --against torch`: the quiet-machine measure and the PyTorch peer (not timing tests)."""

import math
import subprocess
import sys
import time

import pytest

from scalelab import ledger
from scalelab.bench import quiet
from scalelab.bench.shapes import REFERENCE, BenchShape, by_name

BUSY = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass"


def test_quiet_fraction_is_a_fraction_of_the_machine():
    with quiet.watch() as load:
        subprocess.run([sys.executable, "-c", BUSY.format(s=0.3)], check=True)
    assert load.wall_seconds >= 0.3 and load.child_cpu_seconds > 0.2  # the waited-for child is the measured one
    if load.others_cpu_fraction is None:
        pytest.skip("no /proc/stat here")
    assert 0 <= load.others_cpu_fraction <= 1
    assert load.contaminated == (load.others_cpu_fraction > quiet.CONTAMINATED_ABOVE)


def test_a_busy_process_that_is_not_the_child_contaminates():
    if quiet.busy_cpu_seconds() is None:
        pytest.skip("no /proc/stat here")
    busy = subprocess.Popen([sys.executable, "-c", BUSY.format(s=30)])  # not waited for inside the interval
    try:
        time.sleep(0.2)  # it is running
        with quiet.watch() as load:
            subprocess.run([sys.executable, "-c", "import time; time.sleep(1.0)"], check=True)
    finally:
        busy.kill()
        busy.wait()
    # one spinning core out of `cpus`, less scheduler noise
    assert load.others_cpu_fraction > quiet.CONTAMINATED_ABOVE
    assert load.others_cpu_fraction > 0.6 / load.cpus and load.contaminated


def test_shapes_resolve_without_jax():
    code = ("import sys; from scalelab.bench.shapes import by_name; by_name('reference'); by_name('p1m'); "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert by_name("p3m") == BenchShape.from_ladder("p3m")
    with pytest.raises(ValueError, match="unknown bench shape"):
        by_name("nope")


def _scalelab_param_count(shape: ledger.Shape) -> int:
    """The parameters scalelab's model really allocates (its abstract shapes, nothing computed)."""
    import jax

    from scalelab.model.functional import ModelFns
    from scalelab.model.transformer import ModelSpec

    shapes = ModelFns(ModelSpec(shape=shape)).shapes
    return sum(math.prod(s) for s in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))


@pytest.mark.parametrize("name", ["reference", "p1m"])
def test_torch_peer_has_scalelabs_parameter_count(name):
    torch_peer = pytest.importorskip("scalelab.bench.torch_peer")
    case = by_name(name)
    counts = torch_peer.param_counts(torch_peer.Transformer(case.shape))
    assert counts["params_total"] == _scalelab_param_count(case.shape) == ledger.total_params(case.shape)
    assert counts["params"] == ledger.non_embedding_params(case.shape)  # the `params` a bench row reports
    if name == "reference":
        assert counts == {"params": 3_149_056, "params_total": 3_280_128}


def test_torch_peer_gqa_shape_matches_too():
    torch_peer = pytest.importorskip("scalelab.bench.torch_peer")
    case = BenchShape.of("gqa", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, vocab=64, seq_len=16,
                         batch_size=2)
    model = torch_peer.Transformer(case.shape)
    assert torch_peer.param_counts(model)["params_total"] == _scalelab_param_count(case.shape)
    assert torch_peer.train(case, steps=1, warmup=0)["tokens_per_second"] > 0  # the GQA path runs


def test_torch_peer_trains_a_tiny_shape():
    torch_peer = pytest.importorskip("scalelab.bench.torch_peer")
    case = BenchShape.of("tiny", d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab=64, seq_len=32, batch_size=4)
    result = torch_peer.train(case, steps=8, warmup=2, lr=1e-2)
    losses = result["losses"]
    assert len(losses) == 1 + 2 + 8
    assert losses[0] == pytest.approx(math.log(64), rel=0.05)  # near-uniform logits at init
    assert losses[-1] < losses[0] - 0.3  # it learns the fixed batch
    assert result["tokens_per_second"] == pytest.approx(4 * 32 / result["step_seconds"])


def test_torch_peer_command_prints_one_json_line_without_jax():
    pytest.importorskip("torch")
    import json

    proc = subprocess.run([sys.executable, "-m", "scalelab.bench.torch_peer", "--shape", "p15k", "--steps", "1",
                           "--warmup", "0", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["name"] == "p15k" and row["jax_imported"] is False
    assert row["peak_flops"] > 0 and row["peak_flops_end"] > 0 and row["tokens_per_second"] > 0


def test_against_without_torch_says_how_to_install(monkeypatch, capsys):
    from scalelab.bench import against
    from scalelab.cli.main import build_parser

    monkeypatch.setattr(against, "torch_available", lambda: False)
    args = build_parser().parse_args(["bench", "--against", "torch"])
    assert args.func(args) == 2
    assert "pip install -e '.[bench]'" in capsys.readouterr().err


def test_reference_is_the_default_shape():
    assert by_name("reference") is REFERENCE
