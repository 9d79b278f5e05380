"""The verdict of one study: statuses, agreement on a and b, the frontier, the held-out error."""

from __future__ import annotations

import math
from itertools import combinations

from scalelab.analysis.reports.tables import exponent_ci, num
from scalelab.analysis.result import FitResult
from scalelab.analysis.verdict import DETERMINED, LABELS, Verdict

FRONTIER_PREFERENCE = (("3", "the envelope of approach 3 along its exact compute-optimal allocation, "
                              "written E + K*C^-gamma (E from L(N, D); K, gamma fitted along the envelope)"),
                       ("2", "E + A*C^-gamma fitted through the IsoFLOP minima of approach 2"))


def _entry(result: FitResult) -> dict:
    held = result.holdout[0] if result.holdout else None
    return {"status": result.status or ("determined" if result.converged else "not determined"),
            "reason": result.reason, "a": result.a, "b": result.b,
            "ci": {k: list(result.ci[k]) for k in ("a", "b") if k in result.ci},
            "bootstrap": {k: result.bootstrap.get(k) for k in ("requested", "succeeded")} if result.bootstrap else {},
            "holdout_rel_error": held["rel_error"] if held else None}


def _inside(value, interval) -> bool:
    return bool(interval) and interval[0] is not None and interval[0] <= value <= interval[1]


def _pairs(entries: dict) -> list[dict]:
    determined = [a for a, e in entries.items() if e["status"] == DETERMINED and {"a", "b"} <= set(e["ci"])]
    rows = []
    for first, second in combinations(determined, 2):
        one, two = entries[first], entries[second]
        row = {"approaches": [first, second]}
        for key in ("a", "b"):
            row[key] = _inside(one[key], two["ci"][key]) and _inside(two[key], one["ci"][key])
            row[f"delta_{key}"] = abs(one[key] - two[key])
        rows.append(row)
    return rows


def _agreement_lines(rows: list[dict], entries: dict) -> list[str]:
    determined = [a for a, e in entries.items() if e["status"] == DETERMINED]
    if len(determined) < 2:
        names = ", ".join(LABELS[a] for a in determined) or "none"
        return [f"- **Agreement**: not stated: fewer than two approaches are determined with intervals "
                f"(determined: {names})."]
    lines = []
    for row in rows:
        first, second = (LABELS[a] for a in row["approaches"])
        both = [k for k in ("a", "b") if row[k]]
        words = (f"agree on {' and '.join(both)}" if both else "agree on neither a nor b")
        if len(both) == 1:
            words += f" but not on {'b' if both == ['a'] else 'a'}"
        lines.append(f"- **{first} vs {second}**: {words} within their 95% intervals "
                     f"(a differs by {row['delta_a']:.3f}, b by {row['delta_b']:.3f}).")
    if not rows:
        lines.append("- **Agreement**: not stated: the determined approaches have no bootstrap intervals.")
    return lines


def _frontier(fits: dict) -> tuple[dict | None, str]:
    for approach, source in FRONTIER_PREFERENCE:
        f = fits.get(approach)
        if f is not None and f.determined and f.frontier and all(
                math.isfinite(f.frontier[k]) for k in ("E", "A", "gamma")):
            fr = f.frontier
            if approach == "3" and fr["E"] == 0.0:   # a law without a floor (Kaplan's L(N, D))
                source = source.replace("E + K*C^-gamma (E from L(N, D); ", "K*C^-gamma (the law has no floor; ")
            floor = f"{num(fr['E'])} + " if fr["E"] != 0.0 else ""
            text = (f"L(C) = {floor}{num(fr['A'])} * C^-{fr['gamma']:.4f}, {source}"
                    + (f", over C from {num(f.details['allocation_range'][0])} to "
                       f"{num(f.details['allocation_range'][1])}" if approach == "3" else ""))
            if "bound" in str(f.details.get("frontier_note", "")):
                text += f" (note: {f.details['frontier_note']})"
            return {"source": approach, "description": source, **fr}, text
    return None, "no determined approach gives a frontier L(C)"


def _interval_note(row: dict) -> str:
    """' (inside/OUTSIDE its 95% prediction interval [lo, hi])' when the held-out row has one."""
    if "prediction_interval" not in row:
        return ""
    low, high = row["prediction_interval"]
    where = "inside" if row["inside_prediction_interval"] else "OUTSIDE"
    return f" ({where} its 95% prediction interval [{low:.4f}, {high:.4f}])"


def _holdout_line(fits: dict, info: dict) -> str:
    errors = [(a, f.holdout[0]) for a, f in fits.items() if f.holdout]
    if not errors:
        return "- **Held-out error**: none (" + (info.get("reason") or "no held-out check was run") + ")."
    _, run = errors[0]
    name = run.get("model") or f"N = {num(run['params'])}"
    parts = [f"{LABELS[a]} {100 * row['rel_error']:+.2f}%" + _interval_note(row)
             + ("" if fits[a].determined else " (not determined)") for a, row in errors]
    repeats = int(info.get("n_repeats") or 1)
    target = (f"its best run ({name}, loss {run['loss']:.4f})" if repeats == 1 else
              f"its best point ({name}, mean loss of its {repeats} seeds {run['loss']:.4f})")
    return (f"- **Held-out error**: fitted without the largest budget (C = {num(info.get('budget'))}, "
            f"{info.get('n_held_out', '?')} runs) and predicting {target}: " + ", ".join(parts) + ".")


def build_verdict(label: str, fits: dict, holdout_info: dict | None = None) -> Verdict:
    """The verdict of one study from its fits (approach -> FitResult, placeholders included)."""
    entries = {a: _entry(f) for a, f in fits.items()}
    verdict = Verdict(study=label, approaches=entries, agreement=_pairs(entries),
                      holdout=dict(holdout_info or {}))
    verdict.holdout["rel_error"] = {a: e["holdout_rel_error"] for a, e in entries.items()
                                    if e["holdout_rel_error"] is not None}
    verdict.frontier, frontier_text = _frontier(fits)
    lines = []
    for approach, e in entries.items():
        f = fits[approach]
        if e["status"] == DETERMINED:
            lines.append(f"- **{LABELS[approach]}: determined**: a = {exponent_ci(f.a, f.ci.get('a'), 3)}, "
                         f"b = {exponent_ci(f.b, f.ci.get('b'), 3)}{_bootstrap_note(f)}.")
        else:
            lines.append(f"- **{LABELS[approach]}: NOT DETERMINED**: {e['reason'] or f.message}. "
                         "It is left out of the agreement statement.")
    lines += _agreement_lines(verdict.agreement, entries)
    lines.append(f"- **Frontier**: {frontier_text}.")
    lines.append(_holdout_line(fits, verdict.holdout))
    lines.append("- **Counted as**: N = non-embedding parameters; C = the table's `flops` (scalelab's ledger: "
                 "6*(N_matmul + d*V) + 12*L*T*H*hd FLOPs per token, output layer and attention included), "
                 "the same N and C for every approach (see Conventions).")
    verdict.lines = lines
    return verdict


def _bootstrap_note(result: FitResult) -> str:
    b = result.bootstrap
    if not b or not b.get("requested"):
        return " (no bootstrap: no intervals)"
    return f" ({b['succeeded']} of {b['requested']} resamples fitted)"
