"""Approach 2 (Hoffmann et al. 2022, section 3.2): IsoFLOP profiles.

Runs are grouped into slices of (nearly) equal compute: by their planned `budget` when the table
has one (`scratchlm scaling sweep` writes it), else by clustering C: sorted by compute, a slice
takes runs up to (1 + tol) times its smallest C. In each slice a parabola of loss against log N
is fitted; its vertex is the slice's N_opt (and the loss there, L_opt). Then N_opt = k_N C^a is a
straight line in log-log space, and D_opt = (C / 6) / N_opt (so b = 1 - a, k_D = 1 / (6 k_N)),
the C = 6 N D convention of the paper.

A slice is left out, with a warning naming its compute, when it has fewer than 3 distinct model
sizes, when its parabola opens downwards (no minimum), or when the vertex lies outside the sizes
it sampled (an extrapolated minimum; `allow_extrapolation=True` keeps it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from scratchlm.errors import ScratchLMError
from scratchlm.scaling.laws import Law, LawSamples, fit_power_law
from scratchlm.scaling.runs import Runs

log = logging.getLogger(__name__)


@dataclass
class Slice:
    c: float  # the slice's compute: its budget, else the geometric mean of its runs' C
    runs: np.ndarray  # indices into the runs table
    coef: np.ndarray | None = None  # parabola (p2, p1, p0) in x = log N
    n_opt: float = float("nan")
    loss_opt: float = float("nan")
    skipped: str = ""  # why the slice is not used, "" if used


@dataclass
class IsoFlopFit:
    law: Law
    slices: list[Slice] = field(default_factory=list)

    @property
    def used(self) -> list[Slice]:
        return [s for s in self.slices if not s.skipped]


def group_slices(runs: Runs, tol: float = 0.25) -> list[Slice]:
    """Runs -> IsoFLOP slices (by `budget` if every run has one, else clustering C within 1 + tol)."""
    if runs.budget is not None and np.all(np.isfinite(runs.budget)):
        levels = np.unique(runs.budget)
        return [Slice(float(b), np.flatnonzero(runs.budget == b)) for b in levels]
    order = np.argsort(runs.c)
    slices, current = [], [order[0]]
    for i in order[1:]:
        if runs.c[i] <= runs.c[current[0]] * (1 + tol):
            current.append(i)
        else:
            slices.append(current)
            current = [i]
    slices.append(current)
    return [Slice(float(np.exp(np.mean(np.log(runs.c[s])))), np.array(s)) for s in slices]


def fit_parabola(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Weighted least squares y ~ p2 x^2 + p1 x + p0; returns (p2, p1, p0)."""
    return np.polyfit(x, y, 2, w=None if w is None else np.sqrt(w))


def fit_slice(s: Slice, runs: Runs, allow_extrapolation: bool = False) -> Slice:
    x, y = np.log(runs.n[s.runs]), runs.loss[s.runs]
    if len(np.unique(x)) < 3:
        s.skipped = f"{len(np.unique(x))} distinct model sizes (a parabola needs >= 3)"
        return s
    s.coef = fit_parabola(x, y)
    p2, p1, p0 = s.coef
    if p2 <= 0:
        s.skipped = "the parabola has no minimum (loss is not convex in log N across these sizes)"
        return s
    x_opt = -p1 / (2 * p2)
    s.n_opt, s.loss_opt = float(np.exp(x_opt)), float(p0 - p1 * p1 / (4 * p2))
    if not allow_extrapolation and not x.min() <= x_opt <= x.max():
        s.skipped = (
            f"minimum N {s.n_opt:.3g} lies outside the sampled sizes [{np.exp(x.min()):.3g}, {np.exp(x.max()):.3g}]"
        )
    return s


def fit_isoflop(runs: Runs, tol: float = 0.25, allow_extrapolation: bool = False) -> IsoFlopFit:
    slices = [fit_slice(s, runs, allow_extrapolation) for s in group_slices(runs, tol)]
    for s in slices:
        if s.skipped:
            log.warning("IsoFLOP slice C=%.3g (%d runs) not used: %s", s.c, len(s.runs), s.skipped)
    used = [s for s in slices if not s.skipped]
    if len(slices) < 2:
        raise ScratchLMError(
            f"Approach 2 needs IsoFLOP slices at >= 2 compute levels; all {len(runs)} runs are at one level "
            f"(C ~ {slices[0].c:.3g}). Add runs at other budgets, or widen/narrow the grouping tolerance"
        )
    if len(used) < 2:
        reasons = "; ".join(f"C={s.c:.3g}: {s.skipped}" for s in slices if s.skipped)
        raise ScratchLMError(f"Approach 2 needs >= 2 usable IsoFLOP slices, got {len(used)} ({reasons})")
    c = np.array([s.c for s in used])
    k_n, a = fit_power_law(c, np.array([s.n_opt for s in used]), "Approach 2 N_opt(C)")
    return IsoFlopFit(Law(a, k_n, 1 - a, 1 / (6 * k_n)), slices)


def bootstrap_isoflop(
    runs: Runs, fit: IsoFlopFit, samples: int, seed: int = 0, allow_extrapolation: bool = False
) -> LawSamples:
    """Resample runs with replacement within each used slice, refit its parabola (weighted by the
    counts, all resamples at once per slice), then refit the power law. Resamples in which fewer than
    2 slices keep a valid minimum are dropped."""
    rng = np.random.default_rng(seed)
    used = fit.used
    x_opt = np.full((samples, len(used)), np.nan)
    for j, s in enumerate(used):
        x0 = np.log(runs.n[s.runs])
        x, y = x0 - x0.mean(), runs.loss[s.runs]  # centred: well-conditioned normal equations
        m = len(x)
        w = np.stack([np.bincount(rng.integers(0, m, m), minlength=m) for _ in range(samples)]).astype(float)
        # weighted normal equations for (p0, p1, p2), one (3, 3) system per resample
        xp = np.stack([np.ones_like(x), x, x * x], axis=1)  # (m, 3)
        lhs = np.einsum("bm,mi,mj->bij", w, xp, xp)
        rhs = np.einsum("bm,mi,m->bi", w, xp, y)
        ok = np.abs(np.linalg.det(lhs)) > 1e-12 * np.abs(lhs).max(axis=(1, 2)) ** 3
        lhs[~ok] = np.eye(3)
        p = np.linalg.solve(lhs, rhs[..., None])[..., 0]  # (B, 3): p0, p1, p2
        good = ok & (p[:, 2] > 0)
        xo = -p[:, 1] / (2 * np.where(good, p[:, 2], 1.0))
        if not allow_extrapolation:
            good &= (xo >= x.min()) & (xo <= x.max())
        x_opt[good, j] = xo[good] + x0.mean()
    logc = np.log([s.c for s in used])
    out = []
    for row in x_opt:
        ok = np.isfinite(row)
        if ok.sum() >= 2 and np.ptp(logc[ok]) > 0:
            a, log_k = np.polyfit(logc[ok], row[ok], 1)
            out.append((a, np.exp(log_k)))
    arr = np.array(out).reshape(-1, 2)
    return LawSamples(arr[:, 0], arr[:, 1], 1 - arr[:, 0], 1 / (6 * arr[:, 1]))
