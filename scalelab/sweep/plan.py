"""The IsoFLOP plan, shared by the Hydra sweeper and `scalelab status`.

For a compute budget C and a model size with per-token training FLOPs f (the ledger's convention,
`scalelab.ledger.flops_per_token`, with the padded vocabulary of the data's tokenizer and the
run's `data.seq_len`), the tokens that spend C are D = C / f, rounded to a whole number of steps of
`train.batch_size x data.seq_len` tokens (the trainer runs whole steps only). A pair is kept when
its ledger FLOPs f * D land within `tolerance` (1%) of C and its tokens per non-embedding
parameter D / N lie inside the window; everything else is reported as a note.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scalelab import ledger
from scalelab.runfiles import PLAN, SUMMARY

PLAN_FILE = PLAN
MULTIRUN_FILE = "multirun.yaml"
# keys the IsoFLOP sweeper sets itself: a command-line value for them would contradict the plan
PLANNED_KEYS = ("model", "data.tokens", "budget")
DEFAULT_WINDOW = (2.0, 200.0)  # tokens per parameter: a decade either side of Chinchilla's ~20
# the throughput assumption behind the plan's time estimate (hydra.sweeper.flops_per_second /
# startup_seconds): a 2-core CPU host trains p50k at ~6e9 model FLOP/s (~35% of its measured
# matmul peak); set it to your devices' peak x expected MFU (e.g. 8 x 197e12 x 0.4 on a v5e-8)
DEFAULT_FLOPS_PER_SECOND = 5e9
DEFAULT_STARTUP_SECONDS = 20.0  # per job: imports, data, compilation, final eval and checkpoint


# ----------------------------------------------------------------------------------------------
# the plan


def vocab_size(data_cfg) -> int:
    """The tokenizer's vocabulary (unpadded) of a data config: byte = 257, prepared: its manifest."""
    if data_cfg.source == "prepared" and data_cfg.path:
        from scalelab.data.store import TokenStore

        return TokenStore(data_cfg.path).tokenizer.vocab_size
    if data_cfg.tokenizer != "byte":
        raise ValueError(f"data.tokenizer={data_cfg.tokenizer} needs data=prepared with data.path")
    from scalelab.data.tokenizer import ByteTokenizer

    return ByteTokenizer.vocab_size


def shape_of(cfg) -> ledger.Shape:
    """The ledger shape of a composed training config (padded vocabulary, the run's seq_len)."""
    from scalelab.train.build import model_shape

    return model_shape(cfg.model, vocab_size(cfg.data), cfg.data.seq_len)


def fmt_budget(budget: float) -> str:
    """A budget as it appears in overrides and run directory names: 1e+15, 3e+16, 1.5e+17."""
    return f"{float(budget):.6g}"


@dataclass
class PlannedJob:
    budget: float
    model: str
    params: int  # N, non-embedding
    tokens: int  # D, a whole number of steps
    tokens_per_param: float
    steps: int
    flops: int  # ledger FLOPs of the run: flops_per_token * D
    flops_per_token: int
    flops_error: float  # (flops - budget) / budget
    est_seconds: float
    extra: list[str] = field(default_factory=list)  # other overrides (grid axes, fixed values)
    overrides: list[str] = field(default_factory=list)
    subdir: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    jobs: list[PlannedJob]
    notes: list[str]  # dropped pairs and why
    window: tuple[float, float]
    tolerance: float
    flops_per_second: float
    startup_seconds: float

    def as_dict(self) -> dict:
        return {
            "kind": "isoflop",
            "window_tokens_per_param": list(self.window),
            "tolerance": self.tolerance,
            "flops_per_second": self.flops_per_second,
            "startup_seconds": self.startup_seconds,
            "convention": ledger.CONVENTION,
            "notes": self.notes,
            "jobs": [j.as_dict() for j in self.jobs],
        }


def plan_pair(shape: ledger.Shape, budget: float, tokens_per_step: int, *, model: str,
              window=DEFAULT_WINDOW, tolerance: float = 0.01,
              flops_per_second: float = DEFAULT_FLOPS_PER_SECOND,
              startup_seconds: float = DEFAULT_STARTUP_SECONDS,
              extra=(), varying=()) -> tuple[PlannedJob | None, str | None]:
    """One (budget, size) pair: the planned job, or None and the reason it was dropped.

    `extra`: the job's other overrides; `varying`: those of them that differ between grid points
    (they label the notes)."""
    fpt = ledger.flops_per_token(shape)
    n = ledger.non_embedding_params(shape)
    label = f"budget {fmt_budget(budget)}, {model}" + (f" [{' '.join(varying)}]" if varying else "")
    steps = round(ledger.tokens_for_budget(shape, budget) / tokens_per_step)
    if steps < 1:
        return None, (f"{label}: dropped, one step ({tokens_per_step} tokens = {fpt * tokens_per_step:.3g} FLOPs) "
                      f"exceeds the budget")
    tokens = steps * tokens_per_step
    flops = fpt * tokens
    error = (flops - budget) / budget
    if abs(error) > tolerance:
        return None, (f"{label}: dropped, {steps} whole steps of {tokens_per_step} tokens give {flops:.4g} FLOPs, "
                      f"{error:+.1%} off the budget (more than {tolerance:.0%})")
    tpp = tokens / n
    lo, hi = window
    if not lo <= tpp <= hi:
        return None, (f"{label}: dropped, D/N = {tokens:,}/{n:,} = {tpp:.3g} tokens per parameter, "
                      f"outside the window [{lo:g}, {hi:g}]")
    est = flops / flops_per_second + startup_seconds
    return PlannedJob(budget=float(budget), model=model, params=n, tokens=tokens, tokens_per_param=tpp,
                      steps=steps, flops=flops, flops_per_token=fpt, flops_error=error, est_seconds=est,
                      extra=list(extra)), None


def centre_lr(cfg, shape: ledger.Shape, tokens: int) -> float:
    """The peak lr a run of `cfg` at `tokens` would use: from `optimizer.lr_law` when set, else
    `optimizer.lr` (the size's `model.lr` unless overridden)."""
    if not cfg.optimizer.lr_law:
        return float(cfg.optimizer.lr)
    from scalelab.lr_law_file import read_law

    tokens_per_step = int(cfg.train.batch_size) * int(cfg.data.seq_len)
    return read_law(cfg.optimizer.lr_law).lr(ledger.non_embedding_params(shape), tokens, tokens_per_step)


def lr_grid_overrides(cfg, shape: ledger.Shape, tokens: int, factors) -> list[tuple[float, list[str]]]:
    """(lr, overrides) for each factor of an lr sweep around the run's own lr (`centre_lr`); a
    law's lr becomes a plain optimizer.lr, so the law is switched off for these runs."""
    centre = centre_lr(cfg, shape, tokens)
    off = ["optimizer.lr_law=null"] if cfg.optimizer.lr_law else []
    return [(float(f"{centre * f:.4g}"), [f"optimizer.lr={centre * f:.4g}", *off]) for f in factors]


def colliding_jobs(jobs) -> list[str]:
    """What is wrong with jobs of one sweep, given as (label, run directory, resolved config), that
    resolve to the same run directory with configs that train differently: one line per clash,
    naming both jobs and the keys that differ. (Two such jobs would resume each other's checkpoints,
    or the second would find the first completed and not run.)"""
    from scalelab.train.store import config_differences

    first, clashes = {}, []
    for label, run_dir, config in jobs:
        if run_dir is None:
            continue
        if run_dir not in first:
            first[run_dir] = (label, config)
            continue
        other, other_config = first[run_dir]
        differ = config_differences(other_config, config)
        if differ:
            shown = ", ".join(differ[:6]) + (" ..." if len(differ) > 6 else "")
            clashes.append(f"'{other}' and '{label}' both run in {run_dir} but differ in {shown}")
    return clashes


def job_overrides(job: PlannedJob) -> list[str]:
    return [*job.extra, f"model={job.model}", f"data.tokens={job.tokens}", f"budget={fmt_budget(job.budget)}"]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def format_table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def varying_overrides(combos) -> tuple[list[str], list[list[str]]]:
    """Split grid points' overrides into those shared by all of them and those that vary."""
    combos = [list(c) for c in combos]
    shared = [o for o in combos[0] if all(o in c for c in combos)] if combos else []
    return shared, [[o for o in c if o not in shared] for c in combos]


def format_plan(plan: Plan) -> str:
    """The plan as printed before launching (and by dry_run)."""
    shared, varying = varying_overrides([j.extra for j in plan.jobs])
    with_extra = any(varying)
    header = ["budget", "model", "N", "D", "D/N", "steps", "FLOPs", "off", "est. time"]
    if with_extra:
        header.append("other overrides")
    rows = []
    for j, var in zip(plan.jobs, varying, strict=True):
        row = [fmt_budget(j.budget), j.model, f"{j.params:,}", f"{j.tokens:,}", f"{j.tokens_per_param:.3g}",
               f"{j.steps:,}", f"{j.flops:.4g}", f"{j.flops_error:+.2%}", _duration(j.est_seconds)]
        if with_extra:
            row.append(" ".join(var))
        rows.append(row)
    lo, hi = plan.window
    out = [f"IsoFLOP plan: {len(plan.jobs)} job(s); window {lo:g}-{hi:g} tokens per parameter; "
           f"ledger FLOPs within {plan.tolerance:.0%} of each budget"
           + (f"; with {' '.join(shared)}" if shared else "")]
    if rows:
        out.append(format_table(header, rows, right={2, 3, 4, 5, 6, 7, 8}))
    for note in plan.notes:
        out.append(f"  note: {note}")
    total = sum(j.est_seconds for j in plan.jobs)
    if plan.jobs:
        out.append(f"estimated time assumes {plan.flops_per_second:.3g} FLOP/s (hydra.sweeper.flops_per_second) "
                   f"+ {plan.startup_seconds:g} s per job (hydra.sweeper.startup_seconds): "
                   f"{_duration(total)} if run one after another")
    out.append(f"FLOPs convention: {ledger.CONVENTION}")
    return "\n".join(out)


def write_plan(sweep_dir, plan: Plan, extra: dict | None = None) -> Path:
    from scalelab.train.runlog import write_json_atomic

    path = Path(sweep_dir) / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**plan.as_dict(), **(extra or {})})
    return path


# ----------------------------------------------------------------------------------------------
# completed runs (the sweeper skips them on relaunch; the trainer can use the same test)


def _normal(obj) -> Any:
    """JSON round trip: what a config looks like once written into summary.json."""
    return json.loads(json.dumps(obj, default=str))


def completed_with_config(run_dir, config: dict) -> bool:
    """True when `run_dir/summary.json` says completed and records this same resolved config.

    "Same" is the trainer's own test when it has one (`scalelab.train.store.config_differences`, which
    ignores keys a run may change on resume, such as `train.progress`), else exact equality."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return False
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if summary.get("status") != "completed" or not isinstance(summary.get("config"), dict):
        return False
    old, new = _normal(summary["config"]), _normal(config)
    try:
        from scalelab.train.store import config_differences
    except ImportError:
        return old == new
    return not config_differences(old, new)
