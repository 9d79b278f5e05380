"""L-BFGS run on many independent starts at once (numpy, vectorised over starts).

Used to take thousands of initialisations of the approach-3 objective to their
local minima in a few seconds; the best ones are then polished with scipy's
L-BFGS-B. Each start keeps its own memory, step length and stopping test; a
start stops when its objective changes by less than ``ftol`` (relative to
max(|f|, 1), as in L-BFGS-B) or its largest gradient component is below ``gtol``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BatchResult:
    x: np.ndarray          # (S, P) end points
    f: np.ndarray          # (S,) objective at the end points
    converged: np.ndarray  # (S,) bool: stopped by a tolerance, not by max_iter
    iterations: int


def minimize_batch(fun_grad, x0, max_iter: int = 1000, memory: int = 10,
                   ftol: float = 1e-14, gtol: float = 1e-10, max_halvings: int = 30,
                   max_step: float = 0.5) -> BatchResult:
    """Minimise ``fun_grad`` from every row of ``x0``.

    ``fun_grad(X)`` takes an (S, P) array and returns (f of shape (S,), grad of shape (S, P)).
    """
    x = np.array(x0, dtype=float, copy=True)
    n_starts, n_params = x.shape
    f, g = fun_grad(x)
    s_mem = np.zeros((n_starts, memory, n_params))
    y_mem = np.zeros((n_starts, memory, n_params))
    rho_mem = np.zeros((n_starts, memory))       # 0 marks an unused or rejected pair
    gamma = np.zeros(n_starts)                   # initial inverse-Hessian scale
    has_pair = np.zeros(n_starts, dtype=bool)
    active = np.isfinite(f) & np.all(np.isfinite(g), axis=1)
    done = np.zeros(n_starts, dtype=bool)
    done[np.max(np.abs(g), axis=1) <= gtol] = True
    active &= ~done
    slot = 0
    iteration = 0
    while iteration < max_iter:
        iteration += 1
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        gi = g[idx]
        s_act, y_act, rho_act = s_mem[idx], y_mem[idx], rho_mem[idx]
        # Two-loop recursion, newest pair first.
        q = gi.copy()
        alphas = np.zeros((idx.size, memory))
        order = [(slot - 1 - j) % memory for j in range(memory)]
        for j in order:
            alphas[:, j] = rho_act[:, j] * np.einsum("ij,ij->i", s_act[:, j], q)
            q -= alphas[:, j, None] * y_act[:, j]
        scale = np.where(has_pair[idx], gamma[idx],
                         1.0 / np.maximum(np.linalg.norm(gi, axis=1), 1e-300))
        r = q * scale[:, None]
        for j in reversed(order):
            beta = rho_act[:, j] * np.einsum("ij,ij->i", y_act[:, j], r)
            r += s_act[:, j] * (alphas[:, j] - beta)[:, None]
        direction = -r
        slope = np.einsum("ij,ij->i", gi, direction)
        bad = ~(slope < 0) | ~np.all(np.isfinite(direction), axis=1)
        if bad.any():  # not a descent direction: restart from steepest descent
            direction[bad] = -gi[bad] * (1.0 / np.maximum(np.linalg.norm(gi[bad], axis=1), 1e-300))[:, None]
            slope[bad] = np.einsum("ij,ij->i", gi[bad], direction[bad])
            rho_mem[idx[bad]] = 0.0
            has_pair[idx[bad]] = False
        # Cap the trial step's largest component: L-BFGS scaling is poor across the
        # objective's kinks and an over-long first trial costs many halvings.
        longest = np.max(np.abs(direction), axis=1)
        shrink = np.minimum(1.0, max_step / np.maximum(longest, 1e-300))
        direction *= shrink[:, None]
        slope *= shrink
        # Backtracking (Armijo) line search, vectorised over the starts still searching.
        step = np.ones(idx.size)
        accepted = np.zeros(idx.size, dtype=bool)
        x_new = x[idx].copy()
        f_new = f[idx].copy()
        g_new = gi.copy()
        pending = np.arange(idx.size)
        for _ in range(max_halvings):
            trial_x = x[idx[pending]] + step[pending, None] * direction[pending]
            trial_f, trial_g = fun_grad(trial_x)
            ok = np.isfinite(trial_f) & (trial_f <= f[idx[pending]] + 1e-4 * step[pending] * slope[pending])
            ok &= np.all(np.isfinite(trial_g), axis=1)
            got = pending[ok]
            x_new[got], f_new[got], g_new[got] = trial_x[ok], trial_f[ok], trial_g[ok]
            accepted[got] = True
            pending = pending[~ok]
            if pending.size == 0:
                break
            step[pending] *= 0.5
        # Starts whose line search failed have reached the limit of what can be resolved.
        failed = idx[~accepted]
        active[failed] = False
        done[failed] = True
        moved = idx[accepted]
        acc = np.flatnonzero(accepted)
        s_vec = x_new[acc] - x[moved]
        y_vec = g_new[acc] - g[moved]
        sy = np.einsum("ij,ij->i", s_vec, y_vec)
        yy = np.einsum("ij,ij->i", y_vec, y_vec)
        good = sy > 1e-12 * np.sqrt(yy * np.einsum("ij,ij->i", s_vec, s_vec)) + 1e-300
        s_mem[moved, slot] = s_vec
        y_mem[moved, slot] = y_vec
        rho_mem[moved, slot] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        rho_mem[idx[~accepted], slot] = 0.0
        gamma[moved[good]] = sy[good] / yy[good]
        has_pair[moved[good]] = True
        slot = (slot + 1) % memory
        f_old = f[moved].copy()
        x[moved], f[moved], g[moved] = x_new[acc], f_new[acc], g_new[acc]
        small_change = (f_old - f[moved]) <= ftol * np.maximum(np.maximum(np.abs(f_old), np.abs(f[moved])), 1.0)
        small_grad = np.max(np.abs(g[moved]), axis=1) <= gtol
        stop = moved[small_change | small_grad]
        active[stop] = False
        done[stop] = True
    return BatchResult(x=x, f=f, converged=done, iterations=iteration)
