"""`scalelab analyze tasks`: task accuracy from small runs through the two-step chain (N, D) -> the
task's bits per byte -> accuracy (scalelab/analysis/tasks/chain.py), with a held-out check and a
prediction at a target."""

from __future__ import annotations

import json
from pathlib import Path

from scalelab.cli import common


def add_parsers(subparsers, guarded) -> None:
    p = subparsers.add_parser(
        "tasks", help="predict a task's accuracy from small runs: (N, D) -> task bits per byte -> accuracy",
        description="Fit the task's bits per byte of the right choice against N and D with a law form, and its "
                    "accuracy against those bits per byte with a sigmoid between chance and a fitted ceiling; chain "
                    "them with a bootstrap over the runs; check the chain on the largest budget held out; predict "
                    "the accuracy at --target. The runs need task metrics (train.eval_tasks).")
    p.add_argument("table", metavar="TABLE", help="a runs table (CSV/Parquet) or sweep directories' runs")
    p.add_argument("--task", required=True, metavar="NAME", help="the task (columns task/NAME/acc and task/NAME/bpb)")
    p.add_argument("--metric", default="acc", choices=["acc", "acc_norm"], help="the accuracy (default acc)")
    p.add_argument("--law", default="chinchilla", metavar="FORM", help="step 1's law form: a built-in name or a law "
                   "file (default chinchilla)")
    p.add_argument("--target", metavar="params=N,tokens=D", help="predict the accuracy of a model of N parameters "
                   "trained on D tokens")
    p.add_argument("--chance", type=float, default=0.25, help="the task's chance accuracy (default 0.25: 4 choices)")
    p.add_argument("--items", type=int, metavar="N", help="items a measurement scores (for the prediction interval; "
                   "default: the runs' task/NAME/items column, else the built-in task's count, else none)")
    p.add_argument("--bootstrap", type=int, default=200, metavar="B", help="resamples of the runs (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of step 1's starts (default 0)")
    common.add_out(p, "tasks.json and the task's figure", required=False)
    common.add_json(p, "the result")
    p.set_defaults(func=guarded(run_tasks))


def parse_target(text: str) -> tuple[float, float]:
    from scalelab.analysis import AnalysisError

    try:
        values = dict(part.split("=", 1) for part in text.split(","))
        return float(values["params"]), float(values["tokens"])
    except (ValueError, KeyError):
        raise AnalysisError(f"--target takes params=N,tokens=D; got {text!r}") from None


def default_items(task: str) -> int | None:
    from scalelab.tasks import builtin

    return len(builtin.task_items(task)) if task in builtin.TASKS else None


def run_tasks(args) -> int:
    from scalelab.analysis import AnalysisError, load_inputs
    from scalelab.analysis.tasks.chain import fit_chain, holdout_chain, items_of, runs_for

    table, _ = load_inputs(args.table)
    items = args.items or items_of(runs_for(table, args.task, args.metric), args.task) or default_items(args.task)
    options = {"law": args.law, "bootstrap": args.bootstrap, "seed": args.seed, "chance": args.chance, "items": items}
    chain = fit_chain(table, args.task, args.metric, **options)
    try:
        chain.holdout = holdout_chain(table, args.task, args.metric, **options)
    except AnalysisError as exc:  # too few runs below the largest budget: said, not fatal
        chain.holdout = {"failed": str(exc)}
    result = chain.to_dict()
    if args.target:
        result["target"] = chain.predict(*parse_target(args.target))
    if not common.to_stdout(args.json):
        print(format_chain(result))
    if args.out:
        from scalelab.analysis.reports.plots import save
        from scalelab.analysis.reports.task_plots import task_figure

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tasks.json").write_text(json.dumps(result, indent=2))
        save(task_figure(table, chain, chain.holdout if "failed" not in chain.holdout else None), out,
             f"task_{args.task}")
        print(f"wrote {out / 'tasks.json'} and {out / f'task_{args.task}.png'}")
    common.write_json(result, args.json)
    return 0


def format_chain(r: dict) -> str:
    s = r["sigmoid"]
    lines = [f"task {r['task']} ({r['metric']}, chance {r['chance']:.2f}; {r['n_runs']} runs; "
             f"{r['bootstrap_fitted']} of {r['bootstrap']} resamples fitted)",
             f"  step 1 ({r['law']}): " + ", ".join(f"{k} {v:.4g}" for k, v in r["law_values"].items()),
             f"  step 2: ceiling {s['ceiling']:.3f}, midpoint {s['mid']:.3f} bits per byte, slope {s['k']:.3g}, "
             f"residual sd {s['residual_sd']:.3f}"]
    if not r["determined"]:
        lines.append(f"  NOT DETERMINED: {r['reason']}")
    h = r.get("holdout") or {}
    if "failed" in h:
        lines.append(f"  held-out check: not possible ({h['failed']})")
    elif h:
        interval = f" [{h['interval'][0]:.3f}, {h['interval'][1]:.3f}]" if h["interval"] else ""
        lines.append(f"  held-out (largest budget {h['budget']:.3g}, N {h['params']:.3g}, {h['seeds']} seed(s)): "
                     f"predicted {h['predicted']:.3f}{interval}, measured {h['measured']:.3f}: "
                     f"{'inside' if h['inside'] else 'OUTSIDE'} its 95% prediction interval")
    t = r.get("target")
    if t:
        interval = f" [{t['interval'][0]:.3f}, {t['interval'][1]:.3f}]" if "interval" in t else ""
        lines.append(f"  at N {t['params']:.3g}, D {t['tokens']:.3g}: accuracy {t['accuracy']:.3f}{interval} "
                     f"(bits per byte {t['bpb']:.3f})")
    return "\n".join(lines)
