"""Batched L-BFGS in numpy: many independent small problems (one per row) minimised at once.

Approach 3 starts L-BFGS from 4,500 points of a grid (Besiroglu et al. 2024) and the bootstrap refits
hundreds of resamples; each problem has only 5 parameters and a few hundred data points, so one
Python-level L-BFGS per start spends its time in the interpreter. Here every row of `x` (S, P) is
its own problem: the two-loop recursion, the Armijo backtracking and the stopping tests are all
array operations over the rows, and `fun` evaluates all rows in one vectorised call.

    x, f, iters = batched_lbfgs(fun, x0)    # fun(X (S, P)) -> (f (S,), grad (S, P))

Rows stop independently (gradient or objective change below tolerance, or no Armijo step found);
stopped rows are no longer evaluated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Objective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (X (s, P), rows (s,)) -> f, g


def _direction(g: np.ndarray, s_hist: np.ndarray, y_hist: np.ndarray, rho: np.ndarray, gamma: np.ndarray, k: int):
    """-H g by the L-BFGS two-loop recursion, per row. Histories: (m, s, P) ring buffers, slot k % m
    newest; rho = 1 / (y.s), 0 for empty slots or rejected updates (which then contribute nothing)."""
    m = s_hist.shape[0]
    slots = [j % m for j in range(k - 1, max(k - m, 0) - 1, -1)]  # newest -> oldest
    q = g.copy()
    alphas = []
    for j in slots:
        a = rho[j] * np.einsum("sp,sp->s", s_hist[j], q)
        q -= a[:, None] * y_hist[j]
        alphas.append(a)
    r = gamma[:, None] * q
    for j, a in zip(reversed(slots), reversed(alphas)):
        b = rho[j] * np.einsum("sp,sp->s", y_hist[j], r)
        r += s_hist[j] * (a - b)[:, None]
    return -r


def batched_lbfgs(
    fun: Objective,
    x0: np.ndarray,
    max_iter: int = 300,
    history: int = 10,
    gtol: float = 1e-10,
    ftol: float = 1e-13,
    max_halvings: int = 40,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise every row of `x0` (S, P) independently; returns (x (S, P), f (S,), iterations (S,)).

    `fun(X, rows)` gets the current points of the rows still running (`rows` indexes x0, so per-row
    data such as bootstrap weights can be looked up) and returns their values and gradients.
    Stops a row when max|grad| < gtol, when its objective changes by less than
    ftol * max(1, |f|) in a step, or when backtracking finds no decrease (a kink or a flat region).
    """
    x = np.array(x0, dtype=np.result_type(x0, np.float32))  # float32 rows stay float32 (a cheaper search)
    # Trial points far out along a direction can overflow: their non-finite objective rejects them.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _minimise(fun, x, max_iter, history, gtol, ftol, max_halvings)


def _minimise(fun, x, max_iter, history, gtol, ftol, max_halvings):
    S, P = x.shape
    all_rows = np.arange(S)
    f, g = fun(x, all_rows)
    f = np.where(np.isfinite(f), f, np.inf)
    g = g.astype(x.dtype)
    s_hist = np.zeros((history, S, P), dtype=x.dtype)
    y_hist = np.zeros((history, S, P), dtype=x.dtype)
    rho = np.zeros((history, S), dtype=x.dtype)
    tiny = np.finfo(x.dtype).tiny
    gamma = 1.0 / np.maximum(np.linalg.norm(g, axis=1), 1e-12)  # first step: unit length along -g
    active = np.isfinite(f) & (np.abs(g).max(axis=1) >= gtol)
    iters = np.zeros(S, dtype=int)
    for k in range(max_iter):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        gr = g[rows]
        d = _direction(gr, s_hist[:, rows], y_hist[:, rows], rho[:, rows], gamma[rows], k)
        slope = np.einsum("sp,sp->s", gr, d)
        bad = ~(slope < 0)  # not a descent direction (stale curvature): fall back to steepest descent
        d[bad] = -gr[bad] * gamma[rows][bad, None]
        slope[bad] = np.einsum("sp,sp->s", gr[bad], d[bad])

        # Armijo backtracking, all pending rows together: t = 1, 1/2, 1/4, ...
        t = np.ones(rows.size)
        x_new, f_new, g_new = x[rows].copy(), np.full(rows.size, np.inf), np.zeros_like(gr)
        pending = np.arange(rows.size)
        for _ in range(max_halvings):
            xt = x[rows[pending]] + t[pending, None] * d[pending]
            ft, gt = fun(xt, rows[pending])
            ok = np.isfinite(ft) & (ft <= f[rows[pending]] + 1e-4 * t[pending] * slope[pending])
            done = pending[ok]
            x_new[done], f_new[done], g_new[done] = xt[ok], ft[ok], gt[ok]
            pending = pending[~ok]
            if pending.size == 0:
                break
            t[pending] *= 0.5
        found = np.isfinite(f_new)
        stuck = rows[~found]
        active[stuck] = False

        upd = rows[found]
        s = x_new[found] - x[upd]
        y = g_new[found] - g[upd]
        sy = np.einsum("sp,sp->s", s, y)
        slot = k % history
        good = sy > 1e-12 * np.linalg.norm(s, axis=1) * np.linalg.norm(y, axis=1)  # curvature condition
        s_hist[slot, upd], y_hist[slot, upd] = s, y
        rho[slot, upd] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        yy = np.einsum("sp,sp->s", y, y)
        gamma[upd] = np.where(good, sy / np.maximum(yy, tiny), gamma[upd])
        rho[slot, stuck] = 0.0  # rows that stopped leave no stale entry behind

        f_old = f[upd]
        x[upd], f[upd], g[upd] = x_new[found], f_new[found], g_new[found]
        iters[upd] += 1
        small_change = np.abs(f_old - f[upd]) <= ftol * np.maximum(1.0, np.abs(f[upd]))
        small_grad = np.abs(g[upd]).max(axis=1) < gtol
        active[upd[small_change | small_grad]] = False
    return x, f, iters
