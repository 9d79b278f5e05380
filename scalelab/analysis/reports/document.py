"""report.md: the verdict first, then conventions, runs, each approach, comparisons and figures."""

from __future__ import annotations

import datetime as _dt
import math

from scalelab.analysis.conventions import SAME_N_AND_C
from scalelab.analysis.reports.tables import (
    allocation_table,
    exponent_ci,
    fixed,
    holdout_table,
    num,
    parameters_table,
    table,
    with_ci,
)
from scalelab.analysis.result import FitResult
from scalelab.analysis.runs.table import INCLUDED_STATUS
from scalelab.analysis.verdict import ALLOCATION_RANGE, COEFFICIENT_LIMIT, DETERMINED, MIN_FITTED_FRACTION

ORDER = ("kaplan", "1", "2", "3")
FIGURE_CAPTIONS = {
    "loss_vs_compute": "Final loss of every run vs training compute, coloured by model size; circled runs "
                       "form the frontier (lowest loss at that compute so far); lines are each approach's "
                       "fitted compute-optimal loss L(C).",
    "isoflop_profiles": "IsoFLOP profiles: loss vs model size at each compute budget, the parabola (in log N) "
                        "fitted near each minimum, and its vertex (star).",
    "optimal_allocation": "Compute-optimal parameters and tokens vs compute for each approach, with the points "
                          "each fit used and bootstrap 95% bands.",
    "approach3_residuals": "Relative residuals of the approach-3 law L(N, D) for every run.",
    "training_curves": "Training loss along each run vs compute spent so far, coloured by model size, with "
                       "approach 1's lower envelope.",
    "rung": "The prediction rung. Left: the study's runs (grey), the law's compute-optimal loss extrapolated past "
            "the rung with its 95% band from the parameters alone, and each rung size's measured mean (dots) "
            "with its form-aware 95% interval (bars). Right: the rung's IsoFLOP profile: the law (band: its "
            "parameters), the rival forms, the measured means and the form-averaged predictions.",
    "comparison": "Comparison of the studies: runs and fitted loss frontiers (left, labelled with the compute "
                  "multiplier), compute-optimal N and D (right).",
}
RULES = (f"A fit is *determined* when it converged, a and b lie in [{ALLOCATION_RANGE[0]}, "
         f"{ALLOCATION_RANGE[1]}] (approach 3 also: alpha and beta in (0, 3), A and B at most "
         f"{COEFFICIENT_LIMIT:.0e}, E above 0, an interior optimum; approach 2: at least 3 budgets with a "
         f"bracketed minimum), at least {MIN_FITTED_FRACTION:.0%} of its bootstrap resamples fitted, each "
         "estimate lies inside its own 95% interval, and the intervals on a and b lie within [0, 1]. "
         "Two determined approaches *agree* on an exponent when "
         "each one's estimate lies inside the other's interval.")


def render(studies, figures, comparison_figures, result, bootstrap: int) -> str:
    title = " vs ".join(s.label for s in studies)
    out = [f"# Scaling-law report: {title}", ""]
    out += _verdict_section(studies)
    out += [f"Written by `scalelab.analysis` on {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}. "
            "It fits how loss scales with model size N, data D and compute C, and what split of a compute "
            "budget between N and D minimises loss, with up to four methods: Kaplan et al. (2020) and the "
            "three approaches of Hoffmann et al. (2022, 'Chinchilla'). Values in brackets are bootstrap BCa "
            f"95% intervals from {bootstrap} resamples"
            f"{'' if bootstrap else ' (none were requested, so no intervals are shown)'}.", ""]
    out += _conventions_section(studies)
    for study in studies:
        out += [f"## Study: {study.label}" if len(studies) > 1 else "## Results", ""]
        out += _study_section(study, figures.get(study.label, []))
    if result.rung:
        out += rung_section(result.rung, result.rung_figure)
    if result.tasks:
        out += tasks_section(result.tasks)
    if comparison_figures or result.comparisons:
        out += _comparison_section(result.comparisons, comparison_figures)
    out += ["## Figures not drawn", ""]
    out += ([f"- `{name}`: {reason}" for name, reason in result.skipped.items()] if result.skipped
            else ["All figures were drawn."])
    out.append("")
    return "\n".join(out)


def _verdict_section(studies) -> list[str]:
    lines = ["## Verdict", ""]
    for study in studies:
        if len(studies) > 1:
            lines += [f"### {study.label}", ""]
        lines += study.verdict.lines + [""]
    return lines + [f"*{RULES}*", ""]


def _conventions_section(studies) -> list[str]:
    lines = ["## Conventions", ""]
    base = next((f.conventions for s in studies for f in s.fits.values() if f.conventions), {})
    lines += [f"- {base[key]}" for key in ("N", "D", "C", "loss") if key in base]
    lines.append(f"- Same N and C throughout: {SAME_N_AND_C}.")
    for study in studies:
        for approach in ("2", "3"):
            f = study.fits.get(approach)
            if f is not None and "C(N, D)" in f.conventions:
                lines.append(f"- Approach {approach} ({study.label}): {f.conventions['C(N, D)']}.")
        f1 = study.fits.get("1")
        if f1 is not None and "curves" in f1.conventions:
            lines.append(f"- Approach 1 ({study.label}): {f1.conventions['curves']}.")
    lines += ["- Compute-optimal exponents: N_opt = G*C^a, D_opt = H*C^b; tokens/param = D_opt/N_opt.", ""]
    return lines


def _runs_lines(study) -> list[str]:
    included = study.run_counts.get(INCLUDED_STATUS, len(study.table))
    rows = [[status, str(n), "included" if status == INCLUDED_STATUS else "excluded"]
            for status, n in sorted(study.run_counts.items(), key=lambda item: item[0] != INCLUDED_STATUS)]
    t = study.table
    return ["### Runs", "", table(["status", "runs", "in the fits"], rows), "",
            f"{included} runs are fitted: N from {num(t['params'].min())} to {num(t['params'].max())}, "
            f"D from {num(t['tokens'].min())} to {num(t['tokens'].max())}, C from {num(t['flops'].min())} "
            f"to {num(t['flops'].max())} FLOPs.", ""]


def _summary_row(approach: str, f: FitResult) -> list[str]:
    status = "determined" if f.status == DETERMINED else f"**NOT DETERMINED**: {f.reason or f.message}"
    b = f.bootstrap
    fitted = f"{b['succeeded']}/{b['requested']}" if b else "none"
    held = f"{100 * f.holdout[0]['rel_error']:+.2f}%" if f.holdout else "n/a"
    if not f.converged:
        return [f.title, status, "n/a", "n/a", fitted, held]
    return [f.title, status, exponent_ci(f.a, f.ci.get("a")), exponent_ci(f.b, f.ci.get("b")),
            fitted, held]


def _study_section(study, figures) -> list[str]:
    lines = _runs_lines(study) + ["### Summary", ""]
    fits = study.all_fits()
    rows = [_summary_row(a, fits[a]) for a in ORDER if a in fits]
    lines += [table(["approach", "status", "a (N_opt ~ C^a)", "b (D_opt ~ C^b)", "resamples fitted",
                     "held-out error"], rows), ""]
    for approach in ORDER:
        if approach in study.fits:
            lines += _approach_section(study, approach)
    if figures:
        lines += ["### Figures", ""]
        for key, png in figures:
            lines += [f"![{key}]({png})", "", f"*{FIGURE_CAPTIONS[key]}* (also `{png[:-4]}.svg`)", ""]
    return lines


def _law_choice_lines(f: FitResult) -> list[str]:
    """How approach 3's law form was chosen (``law="auto"``): each candidate's AIC on the runs fitted."""
    sel = f.details.get("law_selection")
    if not sel:
        return []
    rows = [[name, "yes" if name == sel["chosen"] else "", str(c["free_parameters"]),
             f"{100 * c['rms_log_residual']:.2f}%", f"{c['aic']:.1f}", f"{c['a']:.4f}"] if c["fitted"]
            else [name, "", "", c["reason"], "", ""] for name, c in sel["candidates"].items()]
    return [f"The law form was chosen by the data: {sel['rule']} ({sel['n_runs']} runs).", "",
            table(["law", "chosen", "free parameters", "RMS log residual", "AIC", "a (point estimate)"], rows), ""]


def _method_lines(f: FitResult) -> list[str]:
    d = f.details
    if f.approach == "3":
        rule = d.get("huber_delta_rule", {}).get("rule")
        if rule and "residual_sigma" in d["huber_delta_rule"]:
            chosen = f" ({rule}; residual sigma {d['huber_delta_rule']['residual_sigma']:.3g})"
        else:
            chosen = f" ({rule})" if rule else " (the published value)"
        return [f"Objective (sum of Huber losses, delta = {d['huber_delta']:.3g}{chosen}): {d['objective']:.6g}, the best "
                f"of {d['n_starts']} L-BFGS starts; {d['n_reached_best']} starts reached it "
                f"({d['best_tolerance']}). The allocation minimises L(N, D) under C = f(N)*D"
                + (f"; under a constant C = k*N*D the same law would give a = {d['a_under_constant_k']:.4f}."
                   if "a_under_constant_k" in d else " (numerically: this law has no closed form)."), ""]
    if f.approach == "2":
        lines = [f"Budgets from {d['budgets_from']}; {len(d['minima'])} used, {len(d['dropped_budgets'])} "
                 f"dropped; parabola fitted to the {d['window']} sizes nearest each budget's minimum.", ""]
        rows = [[num(m["budget"]), str(m["n_sizes"]), num(m["N_fit_low"]) + " - " + num(m["N_fit_high"]),
                 num(m["N_opt"]), num(m["D_opt"]), f"{m['loss_opt']:.4f}"] for m in d["minima"]]
        lines += [table(["budget", "sizes", "parabola over N", "N_opt", "D_opt", "loss at minimum"], rows), ""]
        lines += [f"- dropped budget {num(x['budget'])}: {x['reason']}" for x in d["dropped_budgets"]]
        return lines + ([""] if d["dropped_budgets"] else [])
    if f.approach == "kaplan":
        points = ", ".join(f"{law}: {n} points" for law, n in d["points"].items())
        return [f"Each law is fitted on its lower envelope ({points}). The exponents a and b above are "
                "power laws of N and D through the runs on the loss-vs-FLOPs frontier; Kaplan's own "
                f"derivation from the fitted laws gives a = alpha_C/alpha_N = {d['a_from_alphas']:.4f} and "
                f"b = alpha_C/alpha_D = {d['b_from_alphas']:.4f}.", ""]
    return []


def _holdout_lines(study, approach: str, f: FitResult) -> list[str]:
    held = study.holdout.get(approach)
    if isinstance(held, str):
        return [f"Held-out prediction not possible: {held}", ""]
    if not f.holdout:
        return []
    info = f.details.get("holdout_fit", {})
    repeats = int(info.get("n_repeats") or 1)
    best = "its best run" if repeats == 1 else f"its best point (the mean of its {repeats} seeds)"
    what = (f"without the largest budget (C = {num(info.get('budget'))}, {info.get('n_held_out')} runs), "
            f"predicting {best}" if info.get("kind") == "largest budget"
            else f"without the {info.get('n_held_out')} largest-compute runs, predicting them")
    how = " with L(N, D)" if approach == "3" else " with the frontier L(C), the best loss reachable at that C"
    status = info.get("status", "")
    return [f"Held-out prediction: fitted {what}{how} (that fit: {status or 'n/a'}"
            + (f": {info['reason']}" if info.get("reason") else "") + "):", "", holdout_table(f), ""]


def _approach_section(study, approach: str) -> list[str]:
    f = study.fits[approach]
    lines = [f"### {f.title}", ""]
    if not f.converged:
        return lines + [f"**The fit did not converge**: {f.message}. No numbers are reported.", ""]
    if f.status != DETERMINED:
        lines += [f"**NOT DETERMINED**: {f.reason}. The numbers below are diagnostics, not results.", ""]
    lines += _law_choice_lines(f) + [parameters_table(f), ""] + _method_lines(f)
    lines += ["Compute-optimal allocation:", "", allocation_table(f), ""]
    lines += _holdout_lines(study, approach, f)
    if f.bootstrap:
        b = f.bootstrap
        methods = ", ".join(f"{k}: {m}" for k, m in b.get("interval_method", {}).get("a_b", {}).items())
        lines += [f"Bootstrap: {b['succeeded']} of {b['requested']} resamples fitted, {b['failed']} failed"
                  + (f" ({'; '.join(f'{n}x {r}' for r, n in b['failure_reasons'].items())})" if b["failed"] else "")
                  + f". Resampling: {b['method']}. Intervals: {methods or 'none'}.", ""]
    notes = [w for w in f.warnings if "bootstrap:" not in w]
    if notes:
        lines += ["Notes:", ""] + [f"- {w}" for w in dict.fromkeys(notes)] + [""]
    return lines


def trend_lines(trend: dict, b: str) -> list[str]:
    """The multiplier's fitted trend across the budgets, one line (none without one)."""
    if not trend or not math.isfinite(trend.get("slope", math.nan)):
        return []
    ci = "" if "ci" not in trend else f" [{trend['ci'][0]:.3f}, {trend['ci'][1]:.3f}]"
    verdict = f": {trend['verdict']}" if "verdict" in trend else ""
    return [f"- trend: the multiplier of {b} goes as C^s from {num(trend['budgets'][0])} to "
            f"{num(trend['budgets'][1])} FLOPs, s = {trend['slope']:.3f}{ci} (x{trend['per_decade']:.2f} per decade "
            f"of compute){verdict}"]


def _comparison_section(comparisons, comparison_figures) -> list[str]:
    lines = ["## Comparison", ""]
    for cmp in comparisons:
        a, b = cmp.names
        titles = {cmp.fit_a.title, cmp.fit_b.title}  # the law form of each side (`--law auto` may differ)
        lines += [f"### {b} vs {a} ({' / '.join(sorted(titles))})", ""]
        if not cmp.converged:
            lines += [f"Not compared: {cmp.message}", ""]
            continue
        rows = [[key, exponent_ci(e[a], e.get("ci_" + a)), exponent_ci(e[b], e.get("ci_" + b)),
                 exponent_ci(e["difference"], e.get("ci"))] for key, e in cmp.differences.items()]
        lines += [table(["exponent", a, b, f"{b} - {a}"], rows), ""]
        rows = [[num(r["budget"]), num(r[f"loss_{a}"], 4), num(r[f"loss_{b}"], 4),
                 with_ci(r["multiplier"], r.get("ci"))] for r in cmp.multipliers]
        lines += [table(["C (FLOPs)", f"loss {a}", f"loss {b}", f"compute multiplier of {b}"], rows), ""]
        lines += trend_lines(cmp.trend, b) + [f"- {n}" for n in cmp.notes] + [""]
    for _cmp, png in comparison_figures:
        lines += [f"![comparison]({png})", "", f"*{FIGURE_CAPTIONS['comparison']}*", ""]
    return lines


def _inside(value) -> str:
    return "n/a" if value is None else ("yes" if value else "**no**")


def _band(row: dict, key: str) -> str:
    band = row.get(key)
    return "" if not band else f" [{fixed(band[0])}, {fixed(band[1])}]"


def _measured_band(h: dict) -> str:
    band = h.get("measured_interval")
    return f" [{fixed(band[0], 3)}, {fixed(band[1], 3)}]" if band else ""


def tasks_section(tasks: list[dict]) -> list[str]:
    """Per task: the chain's two steps, its verdict, the held-out prediction of the largest budget's
    accuracy against the measured accuracy."""
    lines = ["## Tasks", "",
             "Each task's accuracy is predicted from the runs by a two-step chain: the bits per byte of the right "
             "choice against N and D (a law form), then accuracy against those bits per byte (a sigmoid between "
             "chance and a fitted ceiling); intervals from resampling the runs and refitting both steps. The "
             "held-out check fits without the largest budget and predicts its best point (the mean of its seeds); "
             "its 95% prediction interval includes the noise of one measurement on the task's items; the measured "
             "accuracy's own 95% interval (binomial over its items and seeds) follows it.", ""]
    rows = []
    for t in tasks:
        h = t.get("holdout") or {}
        if "sigmoid" not in t:
            rows.append([t["task"], "not fitted", "", "", "", t.get("reason", "")])
            continue
        s = t["sigmoid"]
        held = ("n/a: " + h["failed"]) if "failed" in h else (
            f"{fixed(h['predicted'], 3)} [{fixed(h['interval'][0], 3)}, {fixed(h['interval'][1], 3)}] against "
            f"{fixed(h['measured'], 3)}{_measured_band(h)} ({h['seeds']} seed(s)): "
            f"{'inside' if h['inside'] else 'OUTSIDE'}" if h.get("interval") else "")
        rows.append([t["task"], "determined" if t["determined"] else "not determined",
                     f"{t['law']}: alpha {t['law_values'].get('alpha', math.nan):.3g}, beta "
                     f"{t['law_values'].get('beta', math.nan):.3g}",
                     f"ceiling {s['ceiling']:.2f}, midpoint {s['mid']:.2f}", held, t.get("reason", "")])
    lines += [table(["task", "status", "step 1", "step 2", "held-out (largest budget)", "why not determined"], rows), ""]
    for t in tasks:
        if t.get("figure"):
            lines += [f"![task {t['task']}]({t['figure']})", ""]
    return lines


def _weights(rung: dict) -> str:
    weights = rung.get("weights")
    if not weights:
        return ""
    how = {"aic": "its Akaike weight", "aic+holdout": "its Akaike weight times how well it predicted the study's "
           "own largest budget"}.get(rung.get("weighting"), rung.get("weighting"))
    return f", each weighted by {how}: " + ", ".join(f"{k} {w:.2f}" for k, w in weights.items())


def rung_section(rung: dict, png: str | None) -> list[str]:
    """The prediction rung: each size's measured mean against the chosen law and the form-averaged
    prediction, the best size, the rival forms' misses and the learning-rate check."""
    lines = ["## Prediction rung", "",
             f"The study's law, fitted up to {num(rung.get('study_largest_budget'))} FLOPs, predicted a rung at "
             f"C = {num(rung['budget'])} FLOPs ({num(rung.get('ratio'))}x beyond) before it was trained (its plan: "
             f"`{rung.get('source', 'rung.json')}`). Each size's loss is the mean of its seeds; each 95% interval "
             "is for that mean. The chosen law's interval carries its parameters' uncertainty; the form-aware "
             "one also the law's form (the rival forms the study cannot tell apart" + _weights(rung) + ").", ""]
    rows = [[r["model"] or num(r["params"]), num(r["params"]), num(r["tokens"]), r["seeds"], fixed(r["measured"]),
             fixed(r["predicted"]) + _band(r, "prediction_interval"), f"{100 * r['error']:+.2f}%", _inside(r["inside"]),
             (fixed(r["form_averaged"]) if "form_averaged" in r else "") + _band(r, "form_interval"),
             f"{100 * r['form_error']:+.2f}%" if "form_error" in r else "n/a", _inside(r.get("inside_form_interval"))]
            for r in rung["sizes"]]
    lines += [table(["size", "N", "D", "seeds", "measured", f"law {rung.get('law')} [95%]", "miss", "inside",
                     "form-averaged [95%]", "miss", "inside"], rows), ""]
    verdict = "the predicted one" if rung["best_is_predicted"] else (
        "the predicted one's neighbour" if rung["best_is_neighbour"] else f"not the predicted {rung['predicted_best']}")
    lines.append(f"- Best size measured: {rung['measured_best']} ({verdict}); its miss {100 * rung['best_error']:+.2f}% "
                 "against the chosen law" + ("" if rung.get("best_form_error") is None else
                                            f", {100 * rung['best_form_error']:+.2f}% against the form-averaged "
                                            "prediction") + ".")
    for form, misses in (rung.get("rival_forms") or {}).items():
        lines.append(f"- Form {form}: misses " + ", ".join(f"{100 * m:+.2f}%" for m in misses) + ".")
    check = rung.get("lr_check")
    if check and check.get("runs"):
        lines.append(f"- Learning-rate check ({check['model']}, seed(s) {', '.join(map(str, check['seeds']))}): "
                     + ", ".join(f"{r['scale']:.2g}x lr {fixed(r['loss'])}" for r in check["runs"])
                     + ("; the lr the rung used is the best of them." if check["best_scale"] == 1 else
                        f"; {check['best_scale']:g}x gains {100 * check['gain']:.2f}% over the lr the rung used "
                        "(at most that much of the miss is the lr's)."))
    lines.append("")
    lines += rung_tasks_lines(rung.get("tasks") or [])
    if png:
        lines += [f"![rung]({png})", "", f"*{FIGURE_CAPTIONS['rung']}*", ""]
    return lines


def rung_tasks_lines(tasks: list[dict]) -> list[str]:
    """Task accuracy at the rung: each task's chain, fitted to the study, against the rung's runs."""
    if not tasks:
        return []
    lines = ["Task accuracy at the rung: each task's two-step chain, fitted to the study's runs (see Tasks), "
             "predicted each rung size's accuracy (the mean of its seeds, with a 95% prediction interval for "
             "that mean); the measured accuracy's own 95% interval follows it. Step 1 alone is checked too: the "
             "right choice's bits per byte, with an interval from the law's parameters and the runs' scatter "
             "about it.", ""]
    rows = []
    for t in tasks:
        for r in t["sizes"]:
            band = lambda key, r=r: "" if not r.get(key) else f" [{fixed(r[key][0], 3)}, {fixed(r[key][1], 3)}]"
            rows.append([t["task"] + ("" if t["determined"] else " (not determined)"), r["model"] or num(r["params"]),
                         r["seeds"], fixed(r["predicted"], 3) + band("interval"),
                         fixed(r["measured"], 3) + _measured_band(r), f"{r['error']:+.3f}", _inside(r["inside"]),
                         fixed(r["bpb_predicted"], 3) + band("bpb_interval"), fixed(r["bpb_measured"], 3),
                         _inside(r.get("bpb_inside"))])
    return lines + [table(["task", "size", "seeds", "predicted [95%]", "measured [95%]", "miss", "inside",
                           "bits/byte predicted [95%]", "measured", "inside"], rows), ""]
