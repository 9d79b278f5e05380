"""`scalelab analyze rung` and `analyze verify`: plan a prediction rung beyond a study, then set its
trained runs against the law's predictions (scalelab/analysis/decide/rung.py)."""

from __future__ import annotations

import json
from pathlib import Path

from scalelab.cli import common

FITS = "fits.json"


def add_parsers(subparsers, guarded) -> None:
    p = subparsers.add_parser(
        "rung", help="plan a prediction rung: the law's compute-optimal runs at a budget beyond the study",
        description="From a study's report (its fits.json: the approach-3 fit of the chosen law, with bootstrap "
                    "samples), compute N_opt and D_opt at --budget, pick the --sizes sizes of the family nearest "
                    "N_opt, give each the tokens that spend the budget under the study's C(N, D), and predict each "
                    "size's loss (mean of --seeds runs) with 95% intervals. Writes DIR/rung.json and, when the "
                    "sizes are model names, DIR/overrides.txt: the Hydra overrides that train the rung with the "
                    "study's own config (an IsoFLOP sweep of one budget into DIR/sweep).")
    p.add_argument("source", metavar="REPORT", help="a report's fits.json, its directory, or a sweep directory "
                   "holding report/fits.json (`scalelab analyze report SWEEP -o SWEEP/report` makes it)")
    p.add_argument("--budget", type=float, required=True, metavar="FLOPS", help="the rung's budget (beyond the study's largest)")
    p.add_argument("--sizes", type=int, default=3, metavar="K", help="sizes in the rung, nearest N_opt (default 3)")
    p.add_argument("--seeds", type=int, default=1, metavar="S", help="runs per size the prediction is the mean of (default 1)")
    p.add_argument("--models", default=None, metavar="NAMES",
                   help="the family: model names (of --config-dir, else the package's ladder) or parameter counts; "
                        "default: every model of --config-dir")
    p.add_argument("--config-dir", default=None, metavar="DIR", help="the study's config directory (DIR/model/*.yaml)")
    p.add_argument("--study", default=None, metavar="NAME", help="which study of a fits.json holding several")
    p.add_argument("--bootstrap", type=int, default=50, metavar="B",
                   help="resamples of each rival form's fit (chinchilla, kaplan, kaplan-e, fitted to the report's "
                        "runs.csv): the form-aware interval spans those of the forms within 10 of the best AIC "
                        "(default 50; 0: point predictions only)")
    common.add_out(p, "the rung's plan (rung.json, overrides.txt) and, by default, its sweep (DIR/sweep)")
    p.set_defaults(func=guarded(run_rung))

    p = subparsers.add_parser(
        "verify", help="a trained rung against its predictions: the miss per size, inside or outside",
        description="Read a rung's plan (DIR/rung.json) and its trained runs (DIR/sweep, or --runs), and set each "
                    "size's measured mean loss against the law's prediction at its own N and D (95% prediction "
                    "interval of the mean of its seeds). Writes DIR/verify.json.")
    p.add_argument("rung", metavar="RUNG_DIR", help="the directory `analyze rung -o` wrote")
    p.add_argument("--runs", default=None, metavar="SWEEP_OR_TABLE", help="the rung's runs (default RUNG_DIR/sweep)")
    p.add_argument("--study", default=None, metavar="SWEEP_OR_TABLE",
                   help="the study's runs, for the task check: each task's chain, fitted to them, predicts the "
                        "rung's accuracies (default: the runs table the plan was made from, when it says)")
    p.add_argument("--bootstrap", type=int, default=100, metavar="N",
                   help="resamples of each task chain (default 100; `analyze report` uses min(its --bootstrap, 100))")
    p.set_defaults(func=guarded(run_verify))


def read_fits(source: str, study: str | None = None) -> tuple[str, dict, Path]:
    from scalelab.analysis import AnalysisError

    path = Path(source)
    for candidate in (path, path / FITS, path / "report" / FITS):
        if candidate.is_file():
            break
    else:
        raise AnalysisError(f"{source}: no {FITS} (give a report's fits.json or run `scalelab analyze report "
                            f"{source} -o {source}/report` first)")
    studies = json.loads(candidate.read_text())
    if study is None and len(studies) > 1:
        raise AnalysisError(f"{candidate} holds {len(studies)} studies ({', '.join(studies)}): choose one with --study")
    name = study or next(iter(studies))
    if name not in studies:
        raise AnalysisError(f"{candidate}: no study {name!r} (it has {', '.join(studies)})")
    return name, studies[name], candidate


def family_of(args) -> list[tuple]:
    from scalelab.analysis import AnalysisError, resolve_sizes

    if args.models:
        return resolve_sizes(args.models, args.config_dir)
    if not args.config_dir:
        raise AnalysisError("give the family: --config-dir DIR (its model/*.yaml) or --models NAMES")
    names = sorted(p.stem for p in (Path(args.config_dir) / "model").glob("*.yaml"))
    if not names:
        raise AnalysisError(f"--config-dir {args.config_dir}: no model/*.yaml")
    return resolve_sizes(names, args.config_dir)


def run_rung(args) -> int:
    from scalelab.analysis import AnalysisError, json_safe, load_table, plan_rung, rival_predictions, rung

    label, fits, path = read_fits(args.source, args.study)
    out = Path(args.out)
    runs = path.parent / "runs.csv"  # the report's runs: the rival forms are fitted to them
    table = load_table(runs) if runs.is_file() else None
    for sweep in sweeps_of(table):
        if out.resolve().is_relative_to(sweep):
            raise AnalysisError(f"-o {out} lies inside the study's sweep {sweep}: its report would collect the "
                                f"rung's runs as its own; write the rung beside it (e.g. -o {sweep}-rung)")
    plan = plan_rung(fits, args.budget, family_of(args), args.sizes, args.seeds)
    if table is not None:
        delta = (plan["fit"].get("details") or {}).get("huber_delta")
        plan["rival_forms"] = rival_predictions(table, plan, delta=delta, bootstrap=args.bootstrap)
    out.mkdir(parents=True, exist_ok=True)
    if table is not None:
        plan["study_runs"] = str(runs.resolve())  # `analyze verify` checks the task chains with them
    (out / rung.PLAN).write_text(json.dumps(json_safe({"study": label, **plan}), indent=2) + "\n")
    print_plan(plan)
    if all(s["model"] for s in plan["sizes"]):
        (out / rung.OVERRIDES).write_text(" ".join(rung.rung_overrides(plan, out / rung.RUNG_SWEEP)) + "\n")
        (out / rung.LR_OVERRIDES).write_text(" ".join(rung.lr_check_overrides(plan, out / rung.LR_SWEEP)) + "\n")
        print(f"train it: scalelab-train --config-dir STUDY_DIR --config-name STUDY -m $(cat {out / rung.OVERRIDES})")
        print(f"and its lr check ({plan['predicted_best']} at "
              f"{' and '.join(f'{v:g}x' for v in rung.LR_SCALES)} its lr): the same with {out / rung.LR_OVERRIDES}")
    else:
        print("no overrides written: the sizes are parameter counts, not models a sweep can train (--models NAMES)")
    return 0


def sweeps_of(table) -> set[Path]:
    """The directories the study's runs were collected from (each run directory's parent)."""
    if table is None or "run_dir" not in table.columns:
        return set()
    return {Path(str(d)).resolve().parent for d in table["run_dir"].dropna()}


def print_plan(plan: dict) -> None:
    from scalelab.analysis import rung

    print(f"rung at C = {plan['budget']:.3g} FLOPs ({plan['ratio']:.3g}x the study's largest), law {plan['law']}: "
          f"N_opt {plan['n_opt']:.3g}, D_opt {plan['d_opt']:.3g}, L_opt {plan['loss_opt']:.4f}")
    rivals = plan.get("rival_forms") or {}
    for j, s in enumerate(plan["sizes"]):
        band = s.get("prediction_interval")
        shown = f" [{band[0]:.4f}, {band[1]:.4f}]" if band else ""
        if rivals.get("form_interval"):
            low, high = rivals["form_interval"][j]
            shown += f"; form-averaged {rivals['averaged'][j]:.4f} [{low:.4f}, {high:.4f}]"
        flag = "  (beyond the study's sizes)" if s["beyond_fitted_sizes"] else ""
        print(f"  {s['model'] or '-'}: N {s['params']:.3g}, D {s['tokens']:.3g}: {s['predicted']:.4f}{shown}{flag}")
    print(f"predicted best: {plan['predicted_best']}" + ("" if plan["brackets"] else " (the sizes do not bracket N_opt)"))
    for form, rival in rivals.items():
        if form in rung.RIVAL_FORMS and isinstance(rival, dict):
            print(f"  form {form}{form_notes(rival)}: " + (", ".join(f"{v:.4f}" for v in rival["predicted"])
                                                         if rival.get("fitted") else rival["reason"]))
    if "spread" in rivals:
        print(f"the forms part by up to {100 * max(rivals['spread']):.1f}% at this rung")
    if "weights" in rivals:
        print("form-averaged prediction: the forms within 10 AIC of the best, weighted by "
              f"{rivals['weighting']}: " + ", ".join(f"{k} {w:.2f}" for k, w in rivals["weights"].items()))


def form_notes(rival: dict) -> str:
    """How a rival form fits the study, what it missed at the study's held-out budget and the drift
    that miss allows at the rung."""
    if not rival.get("fitted"):
        return ""
    notes = [f"RMS log residual {rival['rms_log_residual']:.4f}", f"AIC {rival['aic']:.1f}"]
    if rival.get("holdout"):
        notes.append(f"held-out miss {100 * rival['holdout']['error']:+.2f}%")
    if rival.get("misspecification"):
        notes.append(f"drift at the rung +-{100 * rival['misspecification']:.1f}% (1 sd)")
    return f" ({', '.join(notes)})"


def run_verify(args) -> int:
    from scalelab.analysis import json_safe, rung

    plan, table = rung.read_plan(args.rung), rung.rung_table(args.rung, args.runs)
    result = rung.verify_dir(args.rung, plan=plan, table=table)
    result["tasks"] = task_check(args, plan, table)
    (Path(args.rung) / rung.VERIFIED).write_text(json.dumps(json_safe(result), indent=2) + "\n")
    for line in verify_lines(result):
        print(line)
    return 0


def task_check(args, plan: dict, table) -> list[dict]:
    """The task chains fitted to the study's runs, checked on the rung's (`table`; none without task
    metrics)."""
    from scalelab.analysis import AnalysisError, load_inputs
    from scalelab.analysis.tasks.chain import rung_tasks

    if args.study and not Path(args.study).exists():
        raise AnalysisError(f"--study {args.study}: no such sweep or runs table")
    source = args.study or plan.get("study_runs")
    if not source or not Path(source).exists():
        return []
    return rung_tasks(load_inputs(source)[0], table, bootstrap=args.bootstrap)


def verify_lines(result: dict) -> list[str]:
    lines = []
    for s in result["sizes"]:
        band = s["prediction_interval"]
        where = "" if band is None else f" [{band[0]:.4f}, {band[1]:.4f}] {'inside' if s['inside'] else 'OUTSIDE'}"
        lines.append(f"  {s['model'] or '-'}: measured {s['measured']:.4f} ({s['seeds']} seed(s)), predicted "
                     f"{s['predicted']:.4f}{where}, miss {100 * s['error']:+.2f}%")
        if s.get("form_interval"):
            low, high = s["form_interval"]
            averaged = (f"form-averaged {s['form_averaged']:.4f}, miss {100 * s['form_error']:+.2f}%; "
                        if "form_averaged" in s else "")
            lines.append(f"      {averaged}form-aware 95% interval [{low:.4f}, {high:.4f}] "
                         f"{'inside' if s['inside_form_interval'] else 'OUTSIDE'}")
    verdict = "the predicted one" if result["best_is_predicted"] else (
        "its neighbour" if result["best_is_neighbour"] else "not where the law put it")
    lines.append(f"best size: {result['measured_best']} ({verdict}); its miss {100 * result['best_error']:+.2f}%"
                 + ("" if result.get("best_form_error") is None
                    else f" (form-averaged {100 * result['best_form_error']:+.2f}%)"))
    for form, misses in result["rival_forms"].items():
        lines.append(f"  form {form}: misses " + ", ".join(f"{100 * m:+.2f}%" for m in misses))
    check = result.get("lr_check")
    if check and check.get("runs"):
        lines.append(f"lr check ({check['model']}): " + ", ".join(f"{r['scale']:.2g}x {r['loss']:.4f}" for r in check["runs"])
                     + ("; the rung's lr is the best of them" if check["best_scale"] == 1 else
                        f"; {check['best_scale']:g}x gains {100 * check['gain']:.2f}% over the rung's lr"))
    elif check:
        lines.append(f"lr check: {check['reason']}")
    for task in result.get("tasks") or []:
        if not task["sizes"]:
            lines.append(f"task {task['task']}: {task['reason']}")
        for s in task["sizes"]:
            band = s["interval"]
            where = "" if band is None else f" [{band[0]:.3f}, {band[1]:.3f}] {'inside' if s['inside'] else 'OUTSIDE'}"
            lines.append(f"task {task['task']}{'' if task['determined'] else ' (not determined)'} at {s['model'] or '-'}: "
                         f"accuracy measured {s['measured']:.3f} ({s['seeds']} seed(s)), predicted "
                         f"{s['predicted']:.3f}{where}")
    return lines
