"""`scalelab analyze rung` and `analyze verify`: plan a prediction rung beyond a study, then set its
trained runs against the law's predictions (scalelab/analysis/decide/rung.py)."""

from __future__ import annotations

import json
from pathlib import Path

from scalelab.cli import common

FITS = "fits.json"
PLAN = "rung.json"
OVERRIDES = "overrides.txt"
VERIFIED = "verify.json"


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
    from scalelab.analysis import json_safe, load_table, plan_rung, rival_predictions, rung_overrides

    label, fits, path = read_fits(args.source, args.study)
    plan = plan_rung(fits, args.budget, family_of(args), args.sizes, args.seeds)
    runs = path.parent / "runs.csv"  # the report's runs: the rival forms are fitted to them
    if runs.is_file():
        delta = (plan["fit"].get("details") or {}).get("huber_delta")
        plan["rival_forms"] = rival_predictions(load_table(runs), plan, delta=delta, bootstrap=args.bootstrap)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / PLAN).write_text(json.dumps(json_safe({"study": label, **plan}), indent=2) + "\n")
    print(f"rung at C = {plan['budget']:.3g} FLOPs ({plan['ratio']:.3g}x the study's largest), law {plan['law']}: "
          f"N_opt {plan['n_opt']:.3g}, D_opt {plan['d_opt']:.3g}, L_opt {plan['loss_opt']:.4f}")
    for s in plan["sizes"]:
        band = s.get("prediction_interval")
        shown = f" [{band[0]:.4f}, {band[1]:.4f}]" if band else ""
        flag = "  (beyond the study's sizes)" if s["beyond_fitted_sizes"] else ""
        print(f"  {s['model'] or '-'}: N {s['params']:.3g}, D {s['tokens']:.3g}: {s['predicted']:.4f}{shown}{flag}")
    print(f"predicted best: {plan['predicted_best']}" + ("" if plan["brackets"] else " (the sizes do not bracket N_opt)"))
    rivals = plan.get("rival_forms") or {}
    for form, rival in rivals.items():
        if isinstance(rival, dict):
            shown = ", ".join(f"{v:.4f}" for v in rival["predicted"]) if rival.get("fitted") else rival["reason"]
            rms = f" (RMS log residual {rival['rms_log_residual']:.4f})" if rival.get("fitted") else ""
            print(f"  form {form}{rms}: {shown}")
    if "spread" in rivals:
        print(f"the forms part by up to {100 * max(rivals['spread']):.1f}% at this rung: the chosen law's interval "
              "carries its parameters' uncertainty, not the form's")
    if "form_interval" in rivals:
        spans = ", ".join(f"{s['model'] or '-'} [{b[0]:.4f}, {b[1]:.4f}]" for s, b in zip(plan["sizes"], rivals["form_interval"]))
        print(f"form-aware 95% intervals (the forms within 10 AIC of the best: {', '.join(rivals['supported'])}): {spans}")
    if all(s["model"] for s in plan["sizes"]):
        overrides = rung_overrides(plan, out / "sweep")
        (out / OVERRIDES).write_text(" ".join(overrides) + "\n")
        print(f"train it: scalelab-train --config-dir STUDY_DIR --config-name STUDY -m $(cat {out / OVERRIDES})")
    else:
        print("no overrides written: the sizes are parameter counts, not models a sweep can train (--models NAMES)")
    return 0


def run_verify(args) -> int:
    from scalelab.analysis import AnalysisError, json_safe, load_inputs, verify_rung

    rung = Path(args.rung)
    try:
        plan = json.loads((rung / PLAN).read_text())
    except OSError as exc:
        raise AnalysisError(f"{rung}: no {PLAN} ({exc.strerror}); plan the rung with `scalelab analyze rung`") from None
    table, _ = load_inputs(args.runs or str(rung / "sweep"))
    result = verify_rung(plan, table)
    (rung / VERIFIED).write_text(json.dumps(json_safe(result), indent=2) + "\n")
    for s in result["sizes"]:
        band = s["prediction_interval"]
        where = "" if band is None else f" [{band[0]:.4f}, {band[1]:.4f}] {'inside' if s['inside'] else 'OUTSIDE'}"
        form = s.get("form_interval")
        if form:
            where += f"; form-aware [{form[0]:.4f}, {form[1]:.4f}] {'inside' if s['inside_form_interval'] else 'OUTSIDE'}"
        print(f"  {s['model'] or '-'}: measured {s['measured']:.4f} ({s['seeds']} seed(s)), predicted "
              f"{s['predicted']:.4f}{where}, miss {100 * s['error']:+.2f}%")
    verdict = "the predicted one" if result["best_is_predicted"] else (
        "its neighbour" if result["best_is_neighbour"] else "not where the law put it")
    print(f"best size: {result['measured_best']} ({verdict}); its miss {100 * result['best_error']:+.2f}%")
    for form, misses in result["rival_forms"].items():
        print(f"  form {form}: misses " + ", ".join(f"{100 * m:+.2f}%" for m in misses))
    return 0
