"""A prediction rung: test a study's law beyond its runs, where it will be used.

`plan_rung` takes a study's fits (a report's `fits.json`: the approach-3 fit of the law the report
chose, with its bootstrap parameter samples), a budget C beyond the study's largest, and a family of
model sizes. It computes the law's compute-optimal N and D at C, picks the K sizes of the family
nearest N_opt (bracketing it where the family allows, so that the rung can say whether the optimum
is where the law put it), gives each the tokens that spend C under the study's own C(N, D), and
predicts each size's loss (the mean of S seeds) with its 95% intervals. The rung is then trained as
an IsoFLOP sweep of one budget (`rung_overrides`). `verify_rung` reads its runs and sets each size's
measured mean against its prediction: the miss, inside or outside, and whether the best size is the
predicted one.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.fitting.approaches import fit
from scalelab.analysis.fitting.law_files import law_from_dict, resolve_law
from scalelab.analysis.fitting.optimum import law_optimum
from scalelab.analysis.fitting.predict import fit_quality, intervals_at, law_and_params
from scalelab.analysis.runs.flops_model import FlopsPerToken
from scalelab.analysis.runs.table import INCLUDED_STATUS

DEFAULT_SIZES = 3
# the forms a rung also predicts with (point predictions, fitted to the study's runs as its report was):
# how far forms that fit the study about equally well part at the rung is the uncertainty of the
# form, which the chosen law's interval does not carry
RIVAL_FORMS = ("chinchilla", "kaplan", "kaplan-e")
# forms whose AIC is within this of the best are ones the study cannot tell apart (Burnham and Anderson's
# rule of thumb: beyond 10, a model has essentially no support); the form-aware interval spans theirs
SUPPORT_AIC = 10.0


def study_fpt(fit: dict) -> FlopsPerToken:
    """The study's C(N, D) = f(N) * D, as its fit recorded it."""
    knots = (fit.get("details") or {}).get("flops_per_token")
    if not knots:
        raise AnalysisError("the fit records no flops-per-token model (fit it with approach 3 from a runs table)")
    return FlopsPerToken(tuple(np.log(knots["params"])), tuple(np.log(knots["flops_per_token"])),
                         knots.get("source", "the study's fit"))


def optimum_at(fit: dict, budget: float) -> tuple[float, float, float]:
    """(N_opt, D_opt, L_opt) of the fitted law at `budget` under the study's C(N, D)."""
    form, params, _ = law_and_params(fit)
    n_opt, d_opt, loss, _ = law_optimum(lambda n, d: form.predict(params, {"params": n, "tokens": d}),
                                        study_fpt(fit), [budget])
    return float(n_opt[0]), float(d_opt[0]), float(loss[0])


def choose_sizes(family: list[tuple[str, float]], n_opt: float, k: int = DEFAULT_SIZES) -> list[tuple[str, float]]:
    """The `k` sizes of `family` ((name, N) pairs) nearest N_opt in log N, in order of N."""
    if k < 1:
        raise AnalysisError(f"--sizes must be at least 1, got {k}")
    ordered = sorted(family, key=lambda s: s[1])
    if len(ordered) < k:
        raise AnalysisError(f"the family has {len(ordered)} size(s), fewer than --sizes {k}")
    nearest = sorted(range(len(ordered)), key=lambda i: abs(math.log(ordered[i][1] / n_opt)))[:k]
    return [ordered[i] for i in sorted(nearest)]


def study_largest_budget(fit: dict) -> float:
    return float(((fit.get("details") or {}).get("allocation_range") or [0, 0])[1])


def plan_rung(fits: dict, budget: float, family: list[tuple[str, float]], sizes: int = DEFAULT_SIZES,
              seeds: int = 1) -> dict:
    """The rung at `budget`: its sizes, their tokens and predicted losses (mean of `seeds` runs)."""
    fit = fits.get("3")
    if not fit or not fit.get("converged"):
        raise AnalysisError("the study has no converged approach-3 fit to predict with (see its report)")
    largest = study_largest_budget(fit)
    if not budget > largest:
        raise AnalysisError(f"--budget {budget:.3g} is not beyond the study's largest budget ({largest:.3g} FLOPs): "
                            "a rung tests the law beyond its runs")
    n_opt, d_opt, l_opt = optimum_at(fit, budget)
    fpt = study_fpt(fit)
    largest_size = float(np.exp(max(fpt.log_n)))
    chosen = choose_sizes(family, n_opt, sizes)
    rows = pd.DataFrame([{"model": name, "params": n, "tokens": budget / float(fpt(n)), "flops": budget}
                         for name, n in chosen])
    predictions = intervals_at(fit, rows, repeats=seeds)
    for row in predictions:
        row["beyond_fitted_sizes"] = bool(row["params"] > largest_size * 1.0001)
    best = min(predictions, key=lambda r: r["predicted"])
    return {"budget": float(budget), "study_largest_budget": largest, "ratio": float(budget / largest),
            "seeds": int(seeds), "n_opt": n_opt, "d_opt": d_opt, "loss_opt": l_opt,
            "brackets": bool(chosen[0][1] <= n_opt <= chosen[-1][1]), "sizes": predictions,
            "predicted_best": best["model"], "approach2_frontier_loss": frontier_loss(fits.get("2"), budget),
            "law": ((fit.get("details") or {}).get("law") or {}).get("name", "chinchilla"), "fit": fit}


def rival_predictions(table: pd.DataFrame, plan: dict, forms=RIVAL_FORMS, delta=None, bootstrap: int = 0,
                      seed: int = 0) -> dict:
    """{form: its fit's RMS log residual, AIC and each size's prediction (with `bootstrap`, its 95%
    prediction interval of the mean of the plan's seeds)} for each form fitted to the study's runs (the
    report's Huber delta when given). `supported`: the forms within SUPPORT_AIC of the best AIC;
    `form_interval`: per size, the span of their intervals; `spread`: how far their predictions part."""
    done = table[table["status"] == INCLUDED_STATUS] if "status" in table.columns else table
    points = pd.DataFrame([{k: s[k] for k in ("params", "tokens", "flops")} for s in plan["sizes"]])
    out = {}
    for form in forms:
        result = fit(done, "3", law=form, delta=delta if delta is not None else "auto", bootstrap=bootstrap,
                     seed=seed)
        out[form] = rival_entry(result, form, done, points, plan["seeds"]) if result.converged else {
            "fitted": False, "reason": result.message}
    fitted = {k: v for k, v in out.items() if v.get("fitted")}
    if fitted:
        best = min(v["aic"] for v in fitted.values())
        out["supported"] = [k for k, v in fitted.items() if v["aic"] - best <= SUPPORT_AIC]
        bands = [fitted[k].get("prediction_interval") for k in out["supported"]]
        if all(bands):
            out["form_interval"] = [[min(b[j][0] for b in bands), max(b[j][1] for b in bands)]
                                    for j in range(len(points))]
    if len(fitted) > 1:
        predicted = [v["predicted"] for v in fitted.values()]
        out["spread"] = [float(v) for v in np.max(predicted, axis=0) / np.min(predicted, axis=0) - 1]
    return out


def rival_entry(result, form: str, done: pd.DataFrame, points: pd.DataFrame, seeds: int) -> dict:
    entry = {"fitted": True, **fit_quality(result, done, len(resolve_law(form).parameters)),
             "predicted": [float(v) for v in np.atleast_1d(result.predict_table(points))],
             "law": result.details.get("law") or {"source": "built-in", "name": form}, "params": dict(result.params)}
    if result.bootstrap:
        rows = intervals_at(result.to_dict(), points, repeats=seeds)
        if all("prediction_interval" in r for r in rows):
            entry["prediction_interval"] = [r["prediction_interval"] for r in rows]
    return entry


def frontier_loss(fit: dict | None, budget: float) -> float | None:
    """L_opt(C) of a fit's frontier E + A*C^-gamma (approach 2's, as a second opinion), if it has one."""
    frontier = (fit or {}).get("frontier") if (fit or {}).get("converged") else None
    if not frontier:
        return None
    return float(frontier["E"] + frontier["A"] * budget ** (-frontier["gamma"]))


def rung_overrides(plan: dict, sweep_dir, tokens_per_param=(0.01, 1e6)) -> list[str]:
    """The Hydra overrides that train the rung with the study's own config (IsoFLOP sweeper, one budget)."""
    models = ",".join(s["model"] for s in plan["sizes"])
    low, high = tokens_per_param
    return [f"hydra.sweep.dir={sweep_dir}", f"hydra.sweeper.budgets=[{plan['budget']:g}]",
            f"hydra.sweeper.models=[{models}]", f"hydra.sweeper.tokens_per_param=[{low:g},{high:g}]"]


def measured_sizes(table: pd.DataFrame) -> pd.DataFrame:
    """Per size of a rung's runs table: the mean loss over its completed runs (seeds), their count."""
    done = table[table["status"] == INCLUDED_STATUS] if "status" in table.columns else table
    if done.empty:
        raise AnalysisError("the rung has no completed runs yet: train it first (its overrides.txt)")
    grouped = done.groupby("params", as_index=False)
    out = grouped.agg(loss=("loss", "mean"), tokens=("tokens", "mean"), flops=("flops", "mean"),
                      seeds=("loss", "size"))
    if "model" in done.columns:
        out["model"] = grouped["model"].first()["model"]
    return out


def verify_rung(plan: dict, table: pd.DataFrame) -> dict:
    """Each trained size's measured mean loss against the law's prediction at its own N and D."""
    measured = measured_sizes(table)
    rows = []
    for _, size in measured.iterrows():
        point = pd.DataFrame([{"params": size["params"], "tokens": size["tokens"], "flops": size["flops"]}])
        predicted = intervals_at(plan["fit"], point, repeats=int(size["seeds"]))[0]
        band = predicted.get("prediction_interval")
        rows.append({"model": size.get("model"), "params": float(size["params"]), "tokens": float(size["tokens"]),
                     "flops": float(size["flops"]),
                     "seeds": int(size["seeds"]), "measured": float(size["loss"]),
                     "predicted": predicted["predicted"], "prediction_interval": band,
                     "error": float(size["loss"] / predicted["predicted"] - 1),
                     "inside": None if band is None else bool(band[0] <= size["loss"] <= band[1])})
    rivals = rival_misses(plan.get("rival_forms") or {}, rows)
    bands = (plan.get("rival_forms") or {}).get("form_interval") or []
    by_size = {round(s["params"]): band for s, band in zip(plan["sizes"], bands, strict=False)}
    for row in rows:
        band = by_size.get(round(row["params"]))
        if band is not None:
            row["form_interval"], row["inside_form_interval"] = band, bool(band[0] <= row["measured"] <= band[1])
    best = min(rows, key=lambda r: r["measured"])
    by_model = [r["model"] for r in sorted(rows, key=lambda r: r["params"])]
    predicted_best = plan["predicted_best"]
    return {"budget": plan["budget"], "sizes": rows, "measured_best": best["model"],
            "predicted_best": predicted_best, "best_error": best["error"], "best_inside": best["inside"],
            "best_is_predicted": best["model"] == predicted_best, "rival_forms": rivals,
            "best_is_neighbour": predicted_best in by_model and best["model"] in by_model
            and abs(by_model.index(best["model"]) - by_model.index(predicted_best)) <= 1}


def rival_misses(rivals: dict, rows: list[dict]) -> dict:
    """Each rival form's miss at each trained size (its own N and D), relative: measured / predicted - 1."""
    out = {}
    for form, rival in rivals.items():
        if not isinstance(rival, dict) or not rival.get("fitted"):
            continue
        points = pd.DataFrame([{k: r[k] for k in ("params", "tokens", "flops")} for r in rows])
        predicted = np.atleast_1d(law_from_dict(rival["law"]).predict(rival["params"], points))
        out[form] = [float(r["measured"] / p - 1) for r, p in zip(rows, predicted, strict=True)]
    return out
