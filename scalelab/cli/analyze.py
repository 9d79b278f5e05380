"""Command line: ``scalelab analyze collect|fit|predict|suggest|compare|report|lr-law``.

``add_subparsers(subparsers)`` registers the subcommands on an argparse
subparsers object (the ``scalelab analyze`` command passes its own); each sets
``func`` to a handler that takes the parsed args and returns an exit code:
0 on success (a converged fit that is not determined still exits 0 and says
so), 1 when a fit did not converge, 2 for bad input (the message is printed as
``error: ...`` on stderr). ``main(argv)`` runs it standalone:
``python -m scalelab.cli.analyze fit runs.csv --approach 3``.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from scalelab.cli import common

# nothing from scalelab.analysis at the top: importing it loads pandas, scipy and matplotlib, and
# `scalelab --help` imports this module

EXIT_OK, EXIT_NOT_CONVERGED, EXIT_BAD_INPUT = 0, 1, 2
APPROACH_CHOICES = ("kaplan", "1", "2", "3")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _add_fit_options(parser: argparse.ArgumentParser, default_bootstrap: int) -> None:
    parser.add_argument("--approach", default="3", choices=APPROACH_CHOICES,
                        help="kaplan, 1 (training-curve envelope), 2 (IsoFLOP parabolas), 3 (parametric L(N,D)); "
                             "default 3")
    parser.add_argument("--bootstrap", type=_positive_int, default=default_bootstrap, metavar="K",
                        help=f"bootstrap resamples for 95%% intervals (default {default_bootstrap})")
    parser.add_argument("--budgets", default=None, metavar="C1,C2,...",
                        help="FLOP budgets for the allocation table (default: the data's budgets or a decade grid)")
    _add_search_options(parser)


def _add_search_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (bootstrap, start subsets); default 0")
    parser.add_argument("--n-starts", type=int, default=None, metavar="S",
                        help="approach 3: initialisations (default: the 4500-point grid)")
    parser.add_argument("--bootstrap-starts", type=int, default=None, metavar="S",
                        help="approach 3: extra grid starts per bootstrap resample (default 32)")
    parser.add_argument("--huber-delta", type=_delta, default=None, metavar="DELTA",
                        help="approach 3: the Huber loss's delta on log residuals: a number (default 1e-3, as "
                             "published) or auto (1.345 x the noise of the data's own residuals)")


def _delta(text: str):
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or auto, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number or auto, got {text!r}")
    return value


def add_subparsers(subparsers) -> None:
    """Register collect, fit, predict, suggest, compare, report, lr-law, rung, verify and tasks on ``subparsers``."""
    from scalelab.cli import rung, tasks

    _add_collect(subparsers)
    _add_fit_and_compare(subparsers)
    _add_suggest(subparsers)
    _add_report(subparsers)
    _add_lr_law(subparsers)
    rung.add_parsers(subparsers, _guarded)
    tasks.add_parsers(subparsers, _guarded)


def _add_collect(subparsers) -> None:
    p = subparsers.add_parser("collect", help="collect run directories into a runs table",
                              description="Read every run's summary.json (and metrics.jsonl) under the sweep "
                                          "directories into one table; curves go beside it as <name>.curves.<ext>. "
                                          "Besides N, D, C and the loss, the table has a column for every "
                                          "hyperparameter that varies between the runs (dotted config keys such as "
                                          "optimizer.lr) and lr, seed, batch_size, seq_len, schedule, warmup, mfu, "
                                          "wall_seconds, packed_with (members of its packed group) to filter on.")
    p.add_argument("dirs", nargs="+", metavar="SWEEP_DIR", help="sweep directories (or run directories) to read")
    common.add_out(p, "the table to write: a .csv or .parquet file (the format follows the extension)",
                   metavar="TABLE", old=("--output",))
    p.add_argument("--keep-excluded", action="store_true",
                   help="also write runs that did not complete (marked by 'status'; fits skip them)")
    p.add_argument("--best-over", default=None, metavar="KEY",
                   help="a swept config key (e.g. optimizer.lr): add per-cell columns cell (runs sharing all but "
                        "KEY), is_best, <KEY>_opt (parabola optimum), <KEY>_bracketed and cell_note; every run "
                        "stays in the table (`fit`/`report --best-only` fit the is_best rows)")
    p.set_defaults(func=run_collect)


def _add_fit_and_compare(subparsers) -> None:
    p = subparsers.add_parser("fit", help="fit a scaling law to a runs table",
                              description="Fit a scaling law; print parameters, compute-optimal exponents and "
                                          "allocation, with bootstrap intervals.")
    p.add_argument("table", metavar="TABLE", help="runs table (.csv/.parquet) or a sweep directory")
    _add_fit_options(p, default_bootstrap=0)
    p.add_argument("--holdout-top", type=_positive_int, default=0, metavar="K",
                   help="fit without the K largest-compute runs and report their predicted vs actual loss")
    p.add_argument("--holdout-budget", action="store_true",
                   help="fit without the largest budget and report the predicted vs actual loss of its best run")
    p.add_argument("--law", default=None, metavar="NAME|FILE",
                   help="the law form (approach 3): chinchilla (default) E + A/N^alpha + B/D^beta; tied (one "
                        "exponent, in N and tokens per parameter M); kaplan [(Nc/N)^(alpha_N/alpha_D) + Dc/D]^alpha_D; "
                        "data-constrained (effective data after repeated epochs; needs a column unique_tokens or "
                        "epochs); envelope Linf + A*C^-alpha; auto (the lowest AIC of chinchilla, kaplan and kaplan-e on the "
                        "runs fitted); or a law file (.yaml: expression, parameters with scale, bounds and grid)")
    p.add_argument("--fix", action="append", default=None, metavar="NAME=VALUE",
                   help="pin a parameter of the law (repeatable or comma-separated, e.g. --fix E=1.6)")
    _add_best_only(p)
    common.add_json(p, "the fit (with the bootstrap parameter samples `analyze predict` uses)")
    p.set_defaults(func=run_fit)

    p = subparsers.add_parser("predict", help="predicted loss of a fitted law, with bootstrap intervals",
                              description="Evaluate a fit (the JSON of `fit --json`, approach 3 or any --law) "
                                          "at new points. interval: 95% percentile interval of the law's mean from "
                                          "the fit's bootstrap parameter samples; prediction_interval: the same "
                                          "widened by the fitted runs' log-residual scatter (one new run). Without "
                                          "bootstrap samples only the point prediction is given.")
    p.add_argument("fit", metavar="FIT_JSON", help="the fit, as written by `scalelab analyze fit --json PATH`")
    p.add_argument("--at", action="append", default=None, metavar="COL=V,COL=V",
                   help="one point (repeatable): its columns, e.g. params=1e9,tokens=2e10 (N, D, C stand for "
                        "params, tokens, flops; the data-constrained law also needs unique_tokens or epochs)")
    p.add_argument("--points", default=None, metavar="TABLE",
                   help="a table (.csv/.parquet) of points, one row each")
    common.add_json(p, "the predictions")
    p.set_defaults(func=run_predict)

    p = subparsers.add_parser("compare", help="compare two sweeps fitted the same way",
                              description="Fit A and B with the same method; report B - A exponent differences "
                                          "and the effective compute multiplier of B over A at chosen budgets.")
    p.add_argument("a", metavar="A", help="table or sweep directory (the baseline)")
    p.add_argument("b", metavar="B", help="table or sweep directory")
    p.add_argument("--rungs", nargs=2, default=None, metavar=("A_RUNG", "B_RUNG"),
                   help="each side's trained prediction rung (`analyze rung -o`, one budget): the multiplier claimed "
                        "at the rung's budget against the one its measured losses give")
    _add_fit_options(p, default_bootstrap=0)
    common.add_json(p, "the comparison")
    p.set_defaults(func=run_compare)


def _add_suggest(subparsers) -> None:
    p = subparsers.add_parser(
        "suggest", help="the next runs worth buying: candidates ranked by interval shrinkage at a target per FLOP",
        description="Fit the law, then rank candidate runs (sizes x tokens per parameter) by how much each shrinks "
                    "the 95% interval of the law's prediction at --target per FLOP, and pick a set within this "
                    "round's budget (--budget / --rounds) greedily by shrinkage per FLOP (also started from each "
                    "of the 16 best single runs, keeping the narrowest end). The shrinkage is an "
                    "estimate, not a refit: the Fisher information (Gauss-Newton J^T J of the log residuals at the "
                    "fitted parameters, with the fit's residual variance and its Huber factor) and the delta method "
                    "(the target's variance g^T (J^T J)^-1 g, g the gradient of log L there). A candidate's FLOPs are "
                    "f(N)*D with f the table's own flops/tokens as a function of N (the ledger count its runs "
                    "recorded, interpolated in log N).")
    p.add_argument("table", metavar="TABLE", help="runs table (.csv/.parquet) or a sweep directory")
    p.add_argument("--law", default=None, metavar="NAME|FILE", help="the law form, as for `fit --law` (default chinchilla)")
    p.add_argument("--fix", action="append", default=None, metavar="NAME=VALUE", help="pin a parameter, as for `fit`")
    p.add_argument("--target", required=True, metavar="COL=V,COL=V",
                   help="where the prediction matters, e.g. params=1e9,tokens=2e10 (every variable the law needs)")
    p.add_argument("--budget", type=float, required=True, metavar="FLOPS", help="FLOPs to spend, over all rounds")
    p.add_argument("--rounds", type=int, default=1, metavar="R",
                   help="rounds the budget is spread over: this call picks within --budget / R; run them, collect, "
                        "and ask again (default 1)")
    p.add_argument("--candidates", default=None, metavar="SIZES",
                   help="model sizes: names of the ladder (p15k,p50k,...) or of --config-dir, or parameter counts "
                        "(1e6,3e6); default: the table's own sizes")
    p.add_argument("--config-dir", default=None, metavar="DIR", help="where --candidates names are looked up first "
                   "(DIR/model/NAME.yaml), before the package's ladder")
    p.add_argument("--tokens-per-param", default="1,3,10,30,100,300,1000", metavar="R1,R2,...",
                   help="D/N of each candidate size (default 1,3,10,30,100,300,1000); D is rounded to 3 digits")
    p.add_argument("--top", type=_positive_int, default=10, metavar="K", help="ranked candidates to print (default 10)")
    p.add_argument("--seed", type=int, default=0, help="the fit's seed (default 0)")
    p.add_argument("--n-starts", type=int, default=None, metavar="S", help="fit initialisations (default: the grid)")
    p.add_argument("--huber-delta", type=_delta, default=None, metavar="DELTA", help="as for `fit`")
    common.add_out(p, "the chosen runs: one sweep override line per run (model=NAME data.tokens=T) when sized by "
                   "name, else CSV rows params,tokens,flops", metavar="FILE", required=False)
    common.add_json(p, "the ranking and the chosen runs")
    p.set_defaults(func=run_suggest)


def _add_report(subparsers) -> None:
    p = subparsers.add_parser("report", help="figures and report.md for one or more sweeps",
                              description="Fit every approach the data supports, draw the figures (PNG, SVG "
                                          "and PDF) and write report.md, fits.json, verdict.json and the runs table "
                                          "runs.csv. Several inputs are compared with the first.")
    p.add_argument("inputs", nargs="+", metavar="SWEEP_DIR_OR_TABLE",
                   help="sweep directories or runs tables (.csv/.parquet); the first is the baseline")
    common.add_out(p, "the directory to write the report into", old=("--output",))
    p.add_argument("--approaches", default="kaplan,1,2,3", help="comma-separated (default kaplan,1,2,3)")
    p.add_argument("--bootstrap", type=_positive_int, default=100, metavar="K",
                   help="bootstrap resamples (default 100)")
    p.add_argument("--holdout-top", type=_positive_int, default=None, metavar="K",
                   help="hold out the K largest-compute runs for the prediction check (default: the largest "
                        "budget, predicting its best run; 0: no check)")
    p.add_argument("--budgets", default=None, metavar="C1,C2,...",
                   help="FLOP budgets for the allocation tables (default: the data's budgets or a decade grid)")
    _add_search_options(p)
    p.add_argument("--law", default=None, metavar="NAME|FILE",
                   help="approach 3's law form, as for `fit --law` (default chinchilla), or auto: the lowest AIC of "
                        "chinchilla, kaplan and kaplan-e on the runs fitted (the held-out refit chooses again without them)")
    p.add_argument("--pool", action="store_true", help="pool all inputs into one study instead of comparing them")
    p.add_argument("--rung", default=None, metavar="RUNG_DIR",
                   help="a trained prediction rung (`analyze rung -o RUNG_DIR`, then its sweep): a section, a figure "
                        "and fits.json's `rung` rows setting its measured losses against the plan's predictions")
    _add_best_only(p)
    p.set_defaults(func=run_report)


def _add_best_only(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--best-only", action="store_true",
                        help="fit only the best run of each learning-rate sweep cell (the is_best rows of "
                             "`collect --best-over optimizer.lr`; cells are found here when the table has none)")


def _add_lr_law(subparsers) -> None:
    p = subparsers.add_parser("lr-law", help="fit a learning-rate law to per-cell lr sweeps",
                              description="Cells are runs sharing N, D, the batch and every other varying "
                                          "hyperparameter but the lr. Per cell, a parabola in log(lr) around the "
                                          "best run gives lr_opt; log lr_opt = log c + p log N + q log D (+ r log B, "
                                          "B = batch_size * seq_len tokens) is fitted by least squares with bootstrap "
                                          "intervals (the cells' residuals resampled). Writes DIR/lr_law.json (for optimizer.lr_law=PATH) "
                                          "and the figures lr_sweeps and lr_law (PNG, SVG, PDF).")
    p.add_argument("table", metavar="TABLE", help="runs table (.csv/.parquet) or a sweep directory")
    p.add_argument("--over", default="N,D", metavar="N,D[,B]", help="the law's variables (default N,D)")
    common.add_out(p, "the directory for lr_law.json and the figures (default: the current directory)",
                   required=False)
    common.add_json(p, "the law (the same document as lr_law.json)")
    p.add_argument("--bootstrap", type=_positive_int, default=200, metavar="K",
                   help="bootstrap resamples (the cells' residuals) for 95%% intervals (default 200)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--allow-edge", action="store_true",
                   help="fit without the cells whose optimum is not bracketed by their lr grid (named in a "
                        "warning) instead of refusing")
    p.add_argument("--no-figures", action="store_true", help="write only the law")
    p.set_defaults(func=run_lr_law)


def _guarded(handler):
    """Print warnings as 'warning: ...', AnalysisError as 'error: ...' (exit 2)."""
    def wrapper(args) -> int:
        from scalelab.analysis import AnalysisError

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                code = handler(args)
            except AnalysisError as exc:
                code = EXIT_BAD_INPUT
                error = str(exc)
            else:
                error = None
        for message in dict.fromkeys(str(w.message) for w in caught):
            print(f"warning: {message}", file=sys.stderr)
        if error is not None:
            print(f"error: {error}", file=sys.stderr)
        return code
    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


def _fit_options(args) -> dict:
    options = {}
    if getattr(args, "law", None) is not None or getattr(args, "fix", None):
        from scalelab.analysis import AnalysisError
        if args.approach != "3":
            raise AnalysisError(f"--law and --fix are for approach 3 (a parametric law), not approach {args.approach}")
        options.update(law=args.law, fix=args.fix)
    if args.approach == "3":
        if args.n_starts is not None:
            options["n_starts"] = args.n_starts
        if args.bootstrap_starts is not None:
            options["bootstrap_starts"] = args.bootstrap_starts
        if args.huber_delta is not None:
            options["delta"] = args.huber_delta
    return options


@_guarded
def run_collect(args) -> int:
    from scalelab.analysis import collect, write_table
    table = collect(args.dirs, keep_excluded=args.keep_excluded)
    if args.best_over:
        from scalelab.analysis import best_over
        table = best_over(table, args.best_over)
    written = write_table(table, args.out)
    counts = table.attrs.get("run_counts", {})
    print(f"collected {int((table['status'] == 'completed').sum())} completed runs "
          f"({', '.join(f'{n} {s}' for s, n in counts.items())}) -> {', '.join(map(str, written))}")
    if args.best_over:
        cells = table.loc[table["is_best"].astype(bool)]
        loose = int((~cells.filter(like="_bracketed").iloc[:, 0].astype(bool)).sum())
        print(f"{len(cells)} cells over {args.best_over}, {loose} without a bracketed optimum")
    return EXIT_OK


def _best_only(args, table):
    if not getattr(args, "best_only", False):
        return table
    from scalelab.analysis import best_per_cell
    return best_per_cell(table)


@_guarded
def run_fit(args) -> int:
    from scalelab.analysis import fit, fit_text, load_inputs
    table, _ = load_inputs(args.table)
    table = _best_only(args, table)
    result = fit(table, args.approach, bootstrap=args.bootstrap, budgets=args.budgets, seed=args.seed,
                 holdout_top=args.holdout_top, holdout_budget=args.holdout_budget, **_fit_options(args))
    common.write_json(result.to_dict(), args.json)
    if not result.converged:
        print(f"error: the fit did not converge: {result.message}", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    if not common.to_stdout(args.json):
        print(fit_text(result))
    return EXIT_OK


def _pairs(item: str, option: str) -> dict:
    """{column: value} from 'params=1e9,tokens=2e10' (N, D, C stand for params, tokens, flops)."""
    from scalelab.analysis import ALIASES, AnalysisError
    row = {}
    for part in item.split(","):
        key, sep, value = part.partition("=")
        try:
            row[ALIASES.get(key.strip(), key.strip())] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise AnalysisError(f"{option} expects COLUMN=VALUE pairs (e.g. params=1e9,tokens=2e10), got {part!r}")
    return row


def _points(args):
    import pandas as pd

    from scalelab.analysis import ALIASES, AnalysisError
    rows = [_pairs(item, "--at") for item in args.at or ()]
    frames = [pd.DataFrame(rows)] if rows else []
    if args.points:
        from pathlib import Path

        from scalelab.analysis import read_table
        frames.append(read_table(Path(args.points)).rename(columns=ALIASES))
    if not frames:
        raise AnalysisError("give the points to predict: --at params=...,tokens=... (repeatable) or --points TABLE")
    return pd.concat(frames, ignore_index=True)


@_guarded
def run_predict(args) -> int:
    import json
    from pathlib import Path

    from scalelab.analysis import AnalysisError, intervals_at, json_safe, prediction_note
    try:
        fit = json.loads(Path(args.fit).read_text())
    except (OSError, ValueError) as exc:
        raise AnalysisError(f"cannot read the fit {args.fit!r}: {exc}") from None
    rows = intervals_at(fit, _points(args))
    note = prediction_note(fit)
    common.write_json(json_safe({"predictions": rows, "note": note, "law": (fit.get("details") or {}).get("law")}),
                      args.json)
    if not common.to_stdout(args.json):
        for row in rows:
            where = " ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "predicted")
            shown = f"{row['predicted']:.4f}"
            for key in ("interval", "prediction_interval"):
                if key in row:
                    shown += f"  {key} [{row[key][0]:.4f}, {row[key][1]:.4f}]"
            print(f"{where}: {shown}")
        print(note)
    return EXIT_OK


@_guarded
def run_suggest(args) -> int:
    from pathlib import Path

    from scalelab.analysis import AnalysisError, json_safe, load_inputs, overrides_text, suggest
    try:
        ratios = [float(v) for v in args.tokens_per_param.split(",") if v.strip()]
    except ValueError:
        raise AnalysisError(f"--tokens-per-param expects numbers, got {args.tokens_per_param!r}") from None
    table, _ = load_inputs(args.table)
    options = {k: v for k, v in (("n_starts", args.n_starts), ("delta", args.huber_delta)) if v is not None}
    result = suggest(table, _pairs(args.target, "--target"), args.budget, law=args.law, fix=args.fix,
                     sizes=args.candidates, tokens_per_param=ratios, rounds=args.rounds, config_dir=args.config_dir,
                     seed=args.seed, **options)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(overrides_text(result.chosen))
    common.write_json(json_safe(result.to_dict()), args.json)
    if not common.to_stdout(args.json):
        _print_suggestion(result, args.top)
        if args.out:
            print(f"wrote {len(result.chosen)} run(s) to {args.out}")
    return EXIT_OK


def _print_suggestion(result, top: int) -> None:
    where = " ".join(f"{k}={v:.4g}" for k, v in result.target.items())
    print(f"target {where}: predicted {result.predicted:.4f}, 95% interval width {result.width_now:.4g} now")
    print(f"this round: {result.budget:.3g} FLOPs ({result.rounds} round(s)); {result.flops_note}")
    head = f"{'':>3} {'candidate':<24}{'FLOPs':>10}{'width after':>13}{'shrink/FLOP':>13}"
    print(f"\nchosen, in the order taken (width after: with every run above it):\n{head}")
    for i, row in enumerate(result.chosen_rows, 1):
        print(f"{i:>3} {row['label']:<24}{row['flops']:>10.3g}{row['width_after']:>13.4g}{row['shrink_per_flop']:>13.3g}")
    print(f"spent {result.spent:.3g} of {result.budget:.3g} FLOPs: width {result.width_now:.4g} -> "
          f"{result.width_after:.4g} ({result.width_after / result.width_now:.2f}x)")
    print(f"\nranked alone (width after: this run alone added; * chosen), top {min(top, len(result.ranked))} "
          f"of {len(result.ranked)}:\n{head}")
    for i, row in enumerate(result.ranked[:top], 1):
        mark = "*" if row["chosen"] else " "
        print(f"{i:>3}{mark}{row['label']:<24}{row['flops']:>10.3g}{row['width_after']:>13.4g}{row['shrink_per_flop']:>13.3g}")
    print(f"estimate: {result.estimate}")


@_guarded
def run_compare(args) -> int:
    from scalelab.analysis import compare
    result = compare(args.a, args.b, approach=args.approach, budgets=args.budgets, bootstrap=args.bootstrap,
                     seed=args.seed, rungs=args.rungs, **_fit_options(args))
    common.write_json(result.to_dict(), args.json)
    if not result.converged:
        print(f"error: the fit did not converge: {result.message}", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    if not common.to_stdout(args.json):
        _print_comparison(result)
    return EXIT_OK


def _print_comparison(result) -> None:
    from scalelab.analysis import exponent_ci, fit_text, num, trend_lines, with_ci
    a, b = result.names
    print(f"A = {a}\n" + fit_text(result.fit_a).replace("\n", "\n  "))
    print(f"B = {b}\n" + fit_text(result.fit_b).replace("\n", "\n  "))
    print(f"differences ({b} - {a}):")
    for key, entry in result.differences.items():
        print(f"  {key:<6} {exponent_ci(entry['difference'], entry.get('ci'))}")
    print(f"compute multiplier of {b} over {a}:")
    for row in result.multipliers:
        print(f"  C = {num(row['budget'])}: {with_ci(row['multiplier'], row.get('ci'))}")
    for line in trend_lines(result.trend, b):
        print(line[2:])
    check = result.rung
    if check:
        where = ("" if check.get("inside") is None else
                 f" ({'inside' if check['inside'] else 'OUTSIDE'} the claim's 95% interval)")
        print(f"at the rung, C = {num(check['budget'])}: claimed {with_ci(check['claimed'], check.get('claimed_ci'))}, "
              f"measured {with_ci(check['measured'], check.get('measured_ci'))}{where}; measured best losses "
              f"{a} {check['measured_loss_' + a]:.4f}, {b} {check['measured_loss_' + b]:.4f}")
    for note in result.notes:
        print(f"note: {note}")


@_guarded
def run_report(args) -> int:
    from scalelab.analysis import AnalysisError, report
    approaches = [a.strip() for a in args.approaches.split(",") if a.strip()]
    bad = [a for a in approaches if a not in APPROACH_CHOICES]
    if bad:
        raise AnalysisError(f"unknown approach(es) {', '.join(bad)}: choose from kaplan, 1, 2, 3")
    inputs = args.inputs
    if args.best_only:
        from scalelab.analysis import load_inputs
        inputs = [_best_only(args, load_inputs(source)[0]) for source in inputs]
    result = report(inputs, args.out, approaches=approaches, bootstrap=args.bootstrap,
                    holdout_top=args.holdout_top, budgets=args.budgets, seed=args.seed, pool=args.pool,
                    n_starts=args.n_starts, bootstrap_starts=args.bootstrap_starts, delta=args.huber_delta,
                    law=args.law, rung=args.rung)
    print(f"wrote {result.report}, fits.json, verdict.json, runs.csv and {len(result.figures)} figure files")
    for verdict in result.verdicts.values():
        print(f"verdict{'' if len(result.verdicts) == 1 else ' (' + verdict.study + ')'}:")
        for line in verdict.lines:
            print("  " + line.replace("**", ""))
    for name, reason in result.skipped.items():
        print(f"skipped {name}: {reason}")
    return EXIT_OK


@_guarded
def run_lr_law(args) -> int:
    from pathlib import Path

    from scalelab.analysis import fit_lr_law, law_text, load_inputs
    from scalelab.lr_law_file import write_law
    table, _ = load_inputs(args.table)
    fit = fit_lr_law(table, over=args.over, bootstrap=args.bootstrap, seed=args.seed, allow_edge=args.allow_edge,
                     source=str(args.table))
    out = Path(args.out or ".")
    written = [write_law(fit.law, out / "lr_law.json")]
    if not args.no_figures:
        from scalelab.analysis import save_lr_law_figures as save_figures
        written += save_figures(fit, out)
    common.write_json(fit.law.to_dict(), args.json)
    if not common.to_stdout(args.json):
        print(law_text(fit))
        print(f"wrote {', '.join(map(str, written))}")
        print(f"use it: scalelab-train optimizer.lr_law={written[0]} ...")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalelab analyze", description="Scaling-law analysis of sweeps.")
    common.add_version(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_subparsers(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
