"""`scalelab bench --against torch`: scalelab's training step against a PyTorch CPU trainer of the same shape.

For each shape and each of `rounds` rounds, two fresh processes run one after the other, so that
each has the machine alone and JAX and torch never share a process:

* scalelab's side (`python -m scalelab.bench.against --side scalelab`): `step.bench_shape`, the
  bench's own measurement (the real train step, median of `steps` timed steps after warm-up), with
  the matmul peak measured before (the one its MFU uses) and again after the steps;
* torch's side (`python -m scalelab.bench.torch_peer`): the same model, optimizer and batch in
  eager PyTorch, median of `steps` timed steps after warm-up, with a torch 2048^3 fp32 matmul peak
  before and after.

Each process is watched by `quiet.watch` (the CPU time other processes used meanwhile); a round is
contaminated when either side's `others_cpu_fraction` exceeds `quiet.CONTAMINATED_ABOVE`. The
result per shape: the median scalelab/torch tokens/s ratio over the uncontaminated rounds (over
all rounds, flagged, when none is), and each side's MFU = ledger FLOPs/token x tokens/s / the peak
its own process measured. This module imports neither JAX nor torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys

from scalelab import ledger
from scalelab.bench import quiet
from scalelab.bench.shapes import by_name

INSTALL_HINT = "install it with: pip install -e '.[bench]'  (torch>=2.4,<3, CPU wheels are enough)"


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


class SideFailed(RuntimeError):
    pass


def _run_side(cmd: list[str], timeout: float | None = None) -> dict:
    """Run one side in a fresh process under `quiet.watch`: its JSON line plus the load figures."""
    with quiet.watch() as load:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SideFailed(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SideFailed(f"{' '.join(cmd)} printed no JSON line:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return {**json.loads(lines[-1]), "load": load.as_dict()}


def scalelab_cmd(name: str, steps: int, grad_accum: int = 0) -> list[str]:
    return [sys.executable, "-m", "scalelab.bench.against", "--side", "scalelab", "--shape", name,
            "--steps", str(steps), "--grad-accum", str(grad_accum)]


def torch_cmd(name: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "scalelab.bench.torch_peer", "--shape", name, "--steps", str(steps), "--json"]


def _median(values):
    return statistics.median(values) if values else None


def _fmt_load(side: dict) -> str:
    f = side["load"]["others_cpu_fraction"]
    return "n/a" if f is None else f"{f:.1%}"


def round_line(i: int, r: dict) -> str:
    s, t = r["scalelab"], r["torch"]
    flag = "CONTAMINATED" if r["contaminated"] else ("unmeasured" if r["contaminated"] is None else "quiet")
    return (f"{i + 1:>5}{s['tokens_per_second']:>12,.0f}{t['tokens_per_second']:>11,.0f}{r['ratio']:>7.2f}"
            f"{s['peak_flops'] / 1e9:>9.1f}->{s['peak_flops_end'] / 1e9:<7.1f}"
            f"{t['peak_flops'] / 1e9:>8.1f}->{t['peak_flops_end'] / 1e9:<7.1f}"
            f"{_fmt_load(s):>8}{_fmt_load(t):>8}  {flag}")


ROUND_HEAD = (f"{'round':>5}{'scalelab/s':>12}{'torch/s':>11}{'ratio':>7}{'scalelab peak':>18}{'torch peak':>17}"
              f"{'others':>8}{'others':>8}")
ROUND_SUB = f"{'':>5}{'tokens':>12}{'tokens':>11}{'':>7}{'GFLOP/s start->end':>18}{'GFLOP/s':>17}{'(sl)':>8}{'(torch)':>8}"


def bench_against(names: list[str], rounds: int = 3, steps: int = 20, grad_accum: int = 0, echo=print) -> dict:
    """Alternate scalelab's side and torch's side for `rounds` rounds per shape (see the module doc)."""
    results = []
    for name in names:
        case = by_name(name)
        fpt = ledger.flops_per_token(case.shape)
        echo(f"\n{name}: N {ledger.non_embedding_params(case.shape):,} (total {ledger.total_params(case.shape):,}), "
             f"batch {case.batch_size} x seq {case.shape.seq_len}, {fpt / 1e6:.1f} MFLOP/token (ledger)")
        echo(ROUND_HEAD)
        echo(ROUND_SUB)
        per_round = []
        for i in range(rounds):
            s = _run_side(scalelab_cmd(name, steps, grad_accum))
            t = _run_side(torch_cmd(name, steps))
            if t["params"] != s["params"]:
                raise SideFailed(f"{name}: the torch peer has {t['params']:,} non-embedding parameters, "
                                 f"scalelab {s['params']:,}: not the same model")
            flags = [s["load"]["contaminated"], t["load"]["contaminated"]]
            contaminated = True if any(flags) else (None if None in flags else False)
            for side in (s, t):
                side["mfu"] = fpt * side["tokens_per_second"] / side["peak_flops"]
            per_round.append({"scalelab": s, "torch": t, "ratio": s["tokens_per_second"] / t["tokens_per_second"],
                              "contaminated": contaminated})
            echo(round_line(i, per_round[-1]))
        quiet_rounds = [r for r in per_round if r["contaminated"] is False]
        used = quiet_rounds or per_round
        summary = {
            "name": name, "shape": dataclasses.asdict(case.shape), "batch_size": case.batch_size, "flops_per_token": fpt,
            "params": ledger.non_embedding_params(case.shape), "params_total": ledger.total_params(case.shape),
            "rounds": per_round, "uncontaminated_rounds": len(quiet_rounds),
            "ratio_over": "uncontaminated rounds" if quiet_rounds else "all rounds (every round was contaminated)",
            "ratio": _median([r["ratio"] for r in used]),
            "mfu_scalelab": _median([r["scalelab"]["mfu"] for r in used]),
            "mfu_torch": _median([r["torch"]["mfu"] for r in used]),
            "tokens_per_second_scalelab": _median([r["scalelab"]["tokens_per_second"] for r in used]),
            "tokens_per_second_torch": _median([r["torch"]["tokens_per_second"] for r in used]),
        }
        results.append(summary)
        echo(f"{name}: scalelab / torch tokens/s = {summary['ratio']:.2f} (median over {summary['ratio_over']}, "
             f"{len(used)} of {rounds}); MFU against each process's own measured peak: scalelab "
             f"{summary['mfu_scalelab']:.1%}, torch {summary['mfu_torch']:.1%}")
    return {"against": "torch", "rounds": rounds, "steps": steps, "cpus": os.cpu_count(),
            "contaminated_above": quiet.CONTAMINATED_ABOVE, "results": results}


def _scalelab_side(args) -> int:
    """The scalelab side's process: the bench's own measurement, the peak before and after it."""
    from scalelab.runtime import xla_env

    xla_env.prepare(["bench"])
    from scalelab.bench.step import bench_shape
    from scalelab.runtime import hardware

    peak, method = hardware.peak_flops("fp32")  # measured now (cached: bench_shape's MFU uses this one)
    row = bench_shape(by_name(args.shape), "fp32", args.grad_accum, args.steps)
    measured = method.startswith("measured")
    row["peak_flops_end"] = hardware.measured_matmul_peak.__wrapped__("fp32") if measured else peak
    print(json.dumps(row, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scalelab.bench.against")
    p.add_argument("--side", choices=["scalelab"], required=True)
    p.add_argument("--shape", default="reference")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--grad-accum", type=int, default=0)
    return _scalelab_side(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
