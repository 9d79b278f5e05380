"""A prediction rung: test a study's law beyond its runs, where it will be used.

`plan_rung` takes a study's fits (a report's `fits.json`: the approach-3 fit of the law the report
chose, with its bootstrap parameter samples), a budget C beyond the study's largest, and a family of
model sizes. It computes the law's compute-optimal N and D at C, picks the K sizes of the family
nearest N_opt (bracketing it where the family allows, so that the rung can say whether the optimum
is where the law put it), gives each the tokens that spend C under the study's own C(N, D), and
predicts each size's loss (the mean of S seeds) with its 95% intervals. The rung is then trained as
an IsoFLOP sweep of one budget (`rung_overrides`). `verify_rung` reads its runs and sets each size's
measured mean against its prediction: the miss, inside or outside, and whether the best size is the
predicted one. A miss is (predicted - measured) / measured, the report's held-out relative error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.fitting.approaches import AUTO_LAWS, fit
from scalelab.analysis.fitting.law_files import law_from_dict, resolve_law
from scalelab.analysis.fitting.optimum import law_optimum
from scalelab.analysis.fitting.predict import fit_quality, intervals_at, law_and_params, predictive_draws
from scalelab.analysis.runs.budgets import assign_budgets
from scalelab.analysis.runs.flops_model import FlopsPerToken
from scalelab.analysis.runs.inputs import load_inputs
from scalelab.analysis.runs.table import INCLUDED_STATUS

DEFAULT_SIZES = 3
# a rung directory (`analyze rung -o DIR`): its plan, the overrides of its sweep and of its
# learning-rate check, their sweep directories, and what `analyze verify` writes
PLAN, OVERRIDES, LR_OVERRIDES, VERIFIED = "rung.json", "overrides.txt", "lr_check.txt", "verify.json"
RUNG_SWEEP, LR_SWEEP = "sweep", "lr_check"
# the learning-rate check: the predicted best size also at these multiples of its lr
LR_SCALES = (0.5, 2.0)
# the forms a rung also predicts with (point predictions, fitted to the study's runs as its report was):
# how far forms that fit the study about equally well part at the rung is the uncertainty of the
# form, which the chosen law's interval does not carry
RIVAL_FORMS = AUTO_LAWS
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
            "predicted_best": best["model"], "predicted_best_params": best["params"],
            "approach2_frontier_loss": frontier_loss(fits.get("2"), budget),
            "law": ((fit.get("details") or {}).get("law") or {}).get("name", "chinchilla"), "fit": fit}


def rival_predictions(table: pd.DataFrame, plan: dict, forms=RIVAL_FORMS, delta=None, bootstrap: int = 0,
                      seed: int = 0, weighting: str = "aic+holdout") -> dict:
    """{form: its fit's RMS log residual, AIC and each size's prediction (with `bootstrap`, its 95%
    prediction interval of the mean of the plan's seeds)} for each form fitted to the study's runs (the
    report's Huber delta when given). `supported`: the forms within SUPPORT_AIC of the best AIC;
    `weights`: theirs in the form-averaged prediction (`form_weights`); `averaged`: that prediction per
    size; `form_interval`: per size, the 95% interval of the weighted mixture of their bootstrap
    predictive distributions, each widened by its `misspecification` (with "aic+holdout": what its
    miss at the study's own held-out budget says of its drift at the rung); `form_envelope`: the span
    of their own intervals; `spread`: how far all the fitted forms' predictions part."""
    done = completed(table)
    points = pd.DataFrame([{k: s[k] for k in ("params", "tokens", "flops")} for s in plan["sizes"]])
    out, draws = {}, {}
    for form in forms:
        # the rung needs the resamples' predictions, not the parameters' BCa intervals (no jackknife), and
        # an allocation table at its own budget only
        result = fit(done, "3", law=form, delta=delta if delta is not None else "auto", bootstrap=bootstrap,
                     seed=seed, budgets=[plan["budget"]], jackknife=False)
        if not result.converged:
            out[form] = {"fitted": False, "reason": result.message}
            continue
        out[form] = rival_entry(result, form, done, points, plan["seeds"])
        if result.bootstrap:
            draws[form] = predictive_draws(result.to_dict(), points, plan["seeds"])
            if weighting == "aic+holdout":
                held = holdout_score(done, form, result.details.get("huber_delta"), bootstrap, seed, plan["budget"])
                out[form]["holdout"] = held
                if held and draws[form] is not None:
                    out[form]["misspecification"] = misspecification(held, plan["ratio"])
                    draws[form] = widened(draws[form], out[form]["misspecification"], seed)
    fitted = {k: v for k, v in out.items() if v.get("fitted")}
    if fitted:
        out.update(form_average(fitted, draws, weighting))
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


def form_average(fitted: dict, draws: dict, weighting: str) -> dict:
    """The supported forms, their weights, the averaged prediction and the mixture's 95% interval."""
    best = min(v["aic"] for v in fitted.values())
    supported = [k for k, v in fitted.items() if v["aic"] - best <= SUPPORT_AIC]
    weights = form_weights({k: fitted[k] for k in supported}, weighting)
    out = {"supported": supported, "weights": weights, "weighting": weighting,
           "averaged": [float(v) for v in sum(w * np.asarray(fitted[k]["predicted"]) for k, w in weights.items())]}
    bands = [fitted[k].get("prediction_interval") for k in supported]
    if all(bands):
        out["form_envelope"] = [[min(b[j][0] for b in bands), max(b[j][1] for b in bands)]
                                for j in range(len(bands[0]))]
    if all(draws.get(k) is not None for k in supported):
        out["form_interval"] = mixture_interval({k: draws[k] for k in supported}, weights)
    return out


def form_weights(fitted: dict, weighting: str = "aic+holdout") -> dict:
    """Each form's weight: its Akaike weight exp(-dAIC/2) (how well it fits the study's runs), times, with
    "aic+holdout", the predictive density its refit without the largest budget gave that budget's best
    run (how well it predicted beyond its runs); normalised to sum 1."""
    best = min(v["aic"] for v in fitted.values())
    log_w = {k: -(v["aic"] - best) / 2 for k, v in fitted.items()}
    if weighting == "aic+holdout":
        scores = {k: (v.get("holdout") or {}).get("log_density") for k, v in fitted.items()}
        if all(s is not None for s in scores.values()):
            log_w = {k: w + scores[k] for k, w in log_w.items()}
    elif weighting != "aic":
        raise AnalysisError(f"unknown form weighting {weighting!r}: aic or aic+holdout")
    top = max(log_w.values())
    raw = {k: math.exp(w - top) for k, w in log_w.items()}
    return {k: w / sum(raw.values()) for k, w in raw.items()}


def holdout_score(done: pd.DataFrame, form: str, delta, bootstrap: int, seed: int, budget: float) -> dict | None:
    """The form refitted without the study's largest budget (bootstrapped as the rung's fits are): its
    miss at that budget's best run and the log density of the run under its predictive distribution
    (normal in log loss, its 95% prediction interval's width)."""
    try:
        held = fit(done, "3", law=form, delta=delta if delta is not None else "auto", bootstrap=bootstrap,
                   seed=seed, holdout_budget=True, budgets=[budget], jackknife=False)
    except AnalysisError:
        return None
    row = (held.holdout or [None])[0] if held.converged else None
    band = (row or {}).get("prediction_interval")
    if not band:
        return None
    sigma = math.log(band[1] / band[0]) / (2 * 1.959964)
    z = math.log(row["loss"] / row["predicted"]) / sigma
    largest = float(held.details["holdout"]["budget"])
    below = [b for b in assign_budgets(done)[0].dropna().unique() if b < largest]
    fitted_up_to = float(max(below)) if below else 0.0
    return {"error": float(row["predicted"] / row["loss"] - 1), "inside": bool(band[0] <= row["loss"] <= band[1]),
            "log_density": float(-0.5 * z * z - math.log(sigma)), "sigma": float(sigma),
            "ratio": largest / fitted_up_to if fitted_up_to > 0 else None}


def misspecification(held: dict, ratio: float) -> float:
    """The form's error beyond what its own interval allowed at the study's held-out budget, grown to
    the rung: sqrt(max(0, e^2 - s^2)) * ln(ratio) / ln(held-out ratio), with e its log miss there and s
    its prediction interval's log sd. A form that fits the study's range but bends differently from
    the data drifts from them the further out it predicts; its held-out miss is the one measurement of
    that drift the study has, and it grows with the log of the distance (a drift linear in log C)."""
    if not held.get("ratio") or held["ratio"] <= 1:
        return 0.0
    excess = math.log1p(held["error"]) ** 2 - held["sigma"] ** 2
    return float(math.sqrt(max(excess, 0.0)) * math.log(ratio) / math.log(held["ratio"]))


def widened(draws: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Each draw (all sizes alike: a form's drift moves its whole profile) times exp(N(0, sigma))."""
    if not sigma > 0:
        return draws
    shift = np.random.default_rng(seed).normal(0.0, sigma, size=(draws.shape[0], 1))
    return draws * np.exp(shift)


def mixture_interval(draws: dict, weights: dict, level: float = 0.95) -> list[list[float]]:
    """Per point, the central `level` interval of the mixture of each form's draws at its weight."""
    values = np.concatenate([draws[k] for k in weights])
    mass = np.concatenate([np.full(len(draws[k]), weights[k] / len(draws[k])) for k in weights])
    out = []
    for j in range(values.shape[1]):
        order = np.argsort(values[:, j])
        cumulative = np.cumsum(mass[order]) / mass.sum()
        low = values[order, j][np.searchsorted(cumulative, (1 - level) / 2)]
        high = values[order, j][min(np.searchsorted(cumulative, (1 + level) / 2), len(order) - 1)]
        out.append([float(low), float(high)])
    return out


def frontier_loss(fit: dict | None, budget: float) -> float | None:
    """L_opt(C) of a fit's frontier E + A*C^-gamma (approach 2's, as a second opinion), if it has one."""
    frontier = (fit or {}).get("frontier") if (fit or {}).get("converged") else None
    if not frontier:
        return None
    return float(frontier["E"] + frontier["A"] * budget ** (-frontier["gamma"]))


def rung_overrides(plan: dict, sweep_dir, tokens_per_param=(0.01, 1e6)) -> list[str]:
    """The Hydra overrides that train the rung with the study's own config (IsoFLOP sweeper, one budget;
    the study's per-budget sweep values, `budget_params`, name budgets the rung does not have: the
    sweeper ignores them with a note)."""
    models = ",".join(s["model"] for s in plan["sizes"])
    low, high = tokens_per_param
    return [f"hydra.sweep.dir={sweep_dir}", f"hydra.sweeper.budgets=[{plan['budget']:g}]",
            f"hydra.sweeper.models=[{models}]", f"hydra.sweeper.tokens_per_param=[{low:g},{high:g}]"]


def lr_check_overrides(plan: dict, sweep_dir, seed: int = 0, scales=LR_SCALES) -> list[str]:
    """The overrides of the rung's learning-rate check: the predicted best size, one seed, at each of
    `scales` times the lr its runs get (`optimizer.lr_scale`), into its own sweep directory."""
    one = dict(plan, sizes=[s for s in plan["sizes"] if s["model"] == plan["predicted_best"]])
    return [*rung_overrides(one, sweep_dir), f"hydra.sweeper.params={{train.seed:{seed}}}",
            "optimizer.lr_scale=" + ",".join(f"{v:g}" for v in scales)]


def read_plan(rung_dir) -> dict:
    path = Path(rung_dir) / PLAN
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise AnalysisError(f"{rung_dir}: no {PLAN} ({exc.strerror}); plan the rung with `scalelab analyze rung`") from None


def verify_dir(rung_dir, runs=None, plan: dict | None = None, table: pd.DataFrame | None = None) -> dict:
    """`verify_rung` of a rung directory (`analyze rung -o`): its plan (`plan` when already read), its
    runs (`table` when already read, else RUNG_DIR/sweep or `runs`) and, when trained, its
    learning-rate check (RUNG_DIR/lr_check)."""
    plan = read_plan(rung_dir) if plan is None else plan
    table = rung_table(rung_dir, runs) if table is None else table
    result = verify_rung(plan, table)
    lr_dir = Path(rung_dir) / LR_SWEEP
    if lr_dir.is_dir() and any(lr_dir.iterdir()):
        result["lr_check"] = verify_lr(plan, table, load_inputs(str(lr_dir))[0])
    return result


def rung_table(rung_dir, runs=None) -> pd.DataFrame:
    """The runs table of a rung directory's trained runs (RUNG_DIR/sweep, or `runs`)."""
    return load_inputs(runs if runs is not None else str(Path(rung_dir) / RUNG_SWEEP))[0]


def measured_sizes(table: pd.DataFrame) -> pd.DataFrame:
    """Per size of a rung's runs table: the mean loss over its completed runs (seeds), their count."""
    done = completed(table)
    if done.empty:
        raise AnalysisError("the rung has no completed runs yet: train it first (its overrides.txt)")
    grouped = done.groupby("params", as_index=False)
    out = grouped.agg(loss=("loss", "mean"), tokens=("tokens", "mean"), flops=("flops", "mean"),
                      seeds=("loss", "size"))
    if "model" in done.columns:
        out["model"] = grouped["model"].first()["model"]
    return out


def completed(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] == INCLUDED_STATUS] if "status" in table.columns else table


def verify_rung(plan: dict, table: pd.DataFrame) -> dict:
    """Each trained size's measured mean loss against the chosen law's prediction at its own N and D
    (and against the form-averaged prediction and interval, when the plan has them)."""
    rows = []
    for _, size in measured_sizes(table).iterrows():
        point = pd.DataFrame([{"params": size["params"], "tokens": size["tokens"], "flops": size["flops"]}])
        predicted = intervals_at(plan["fit"], point, repeats=int(size["seeds"]))[0]
        band = predicted.get("prediction_interval")
        rows.append({"model": size.get("model"), "params": float(size["params"]), "tokens": float(size["tokens"]),
                     "flops": float(size["flops"]), "seeds": int(size["seeds"]), "measured": float(size["loss"]),
                     "predicted": predicted["predicted"], "prediction_interval": band,
                     "error": float(predicted["predicted"] / size["loss"] - 1),
                     "inside": None if band is None else bool(band[0] <= size["loss"] <= band[1])})
    add_form_average(plan, rows)
    best = min(rows, key=lambda r: r["measured"])
    order = [round(r["params"]) for r in sorted(rows, key=lambda r: r["params"])]
    predicted_best = plan["predicted_best"]
    predicted_n = round(plan.get("predicted_best_params") or next(
        (s["params"] for s in plan["sizes"] if s["model"] == predicted_best), 0))
    return {"budget": plan["budget"], "study_largest_budget": plan.get("study_largest_budget"),
            "ratio": plan.get("ratio"), "law": plan.get("law"), "sizes": rows,
            "measured_best": best["model"], "predicted_best": predicted_best, "best_error": best["error"],
            "best_inside": best["inside"], "best_form_error": best.get("form_error"),
            "best_inside_form_interval": best.get("inside_form_interval"),
            "best_is_predicted": round(best["params"]) == predicted_n,
            "rival_forms": rival_misses(plan.get("rival_forms") or {}, rows),
            "weights": (plan.get("rival_forms") or {}).get("weights"),
            "best_is_neighbour": predicted_n in order
            and abs(order.index(round(best["params"])) - order.index(predicted_n)) <= 1}


def add_form_average(plan: dict, rows: list[dict]) -> None:
    """Each row's form-averaged prediction, its miss, the form-aware interval and whether it holds."""
    rivals = plan.get("rival_forms") or {}
    keys = {round(s["params"]): j for j, s in enumerate(plan["sizes"])}
    for row in rows:
        j = keys.get(round(row["params"]))
        if j is None:
            continue
        if rivals.get("averaged"):
            row["form_averaged"] = rivals["averaged"][j]
            row["form_error"] = float(rivals["averaged"][j] / row["measured"] - 1)
        if rivals.get("form_interval"):
            band = rivals["form_interval"][j]
            row["form_interval"], row["inside_form_interval"] = band, bool(band[0] <= row["measured"] <= band[1])


def verify_lr(plan: dict, rung: pd.DataFrame, checked: pd.DataFrame) -> dict:
    """The learning-rate check: the predicted best size's loss at each lr tried (the rung's own run of
    the same seed at 1x) and how much the best of them gains over 1x (an upper bound on how much of the
    miss a better lr could explain at this rung)."""
    best = plan["predicted_best"]
    checked = completed(checked)
    seeds = set(checked["seed"]) if "seed" in checked.columns else set()
    own = completed(rung)
    own = own[own["params"].round() == round(plan.get("predicted_best_params") or -1)]
    same = own[own["seed"].isin(seeds)] if seeds and "seed" in own.columns else own
    if same.empty or checked.empty:
        return {"model": best, "reason": "no completed run of the predicted best size to compare"}
    base_lr = float(same["lr"].iloc[0])
    runs = [{"scale": 1.0, "lr": base_lr, "loss": float(same["loss"].mean())}]
    runs += [{"scale": float(r["lr"] / base_lr), "lr": float(r["lr"]), "loss": float(r["loss"])}
             for _, r in checked.iterrows()]
    top = min(runs, key=lambda r: r["loss"])
    return {"model": best, "seeds": sorted(int(v) for v in seeds), "runs": sorted(runs, key=lambda r: r["scale"]),
            "best_scale": round(top["scale"], 3), "gain": float(1 - top["loss"] / runs[0]["loss"])}


def rival_misses(rivals: dict, rows: list[dict]) -> dict:
    """Each rival form's miss at each trained size (its own N and D), relative: predicted / measured - 1."""
    out = {}
    for form, rival in rivals.items():
        if not isinstance(rival, dict) or not rival.get("fitted"):
            continue
        points = pd.DataFrame([{k: r[k] for k in ("params", "tokens", "flops")} for r in rows])
        predicted = np.atleast_1d(law_from_dict(rival["law"]).predict(rival["params"], points))
        out[form] = [float(p / r["measured"] - 1) for r, p in zip(rows, predicted, strict=True)]
    return out
