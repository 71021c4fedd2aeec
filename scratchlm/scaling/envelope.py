"""Approach 1 (Hoffmann et al. 2022, section 3.1): the minimum loss over runs at each compute level.

With loss curves, every point of every curve is a candidate: a run of N parameters that has seen t
tokens has spent C = 6 N t FLOPs. Compute is cut into log-uniform bins; in each bin the point of
lowest loss is the envelope point, with its N and D = t. Without curves the runs' final points
(their C, N, D) are binned the same way. Then N_opt(C) and D_opt(C) are straight-line fits in
log-log space to the envelope points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scratchlm.errors import ScratchLMError
from scratchlm.scaling.laws import Law, LawSamples, fit_power_law
from scratchlm.scaling.runs import Runs


@dataclass
class EnvelopeFit:
    law: Law
    points: dict[str, np.ndarray]  # envelope points: "C", "N", "D", "loss", each (bins,)
    all_points: dict[str, np.ndarray]  # every candidate: "C", "N", "loss", "run" (index into runs)
    used_curves: bool


def candidates(runs: Runs, use_curves: bool = True) -> tuple[dict[str, np.ndarray], bool]:
    """Every (C, N, D, loss) point: curve points when every run has a curve, else final points."""
    if use_curves and runs.curves and all(c is not None for c in runs.curves):
        rows = [(6 * runs.n[i] * t, runs.n[i], t, loss, i) for i, curve in enumerate(runs.curves) for t, loss in curve]
        arr = np.array(rows)
        return {"C": arr[:, 0], "N": arr[:, 1], "D": arr[:, 2], "loss": arr[:, 3], "run": arr[:, 4].astype(int)}, True
    idx = np.arange(len(runs))
    return {"C": runs.c, "N": runs.n, "D": runs.d, "loss": runs.loss, "run": idx}, False


def envelope_points(pts: dict[str, np.ndarray], bins: int) -> np.ndarray:
    """Indices of the lowest-loss point in each non-empty log-uniform compute bin."""
    logc = np.log(pts["C"])
    edges = np.linspace(logc.min(), logc.max(), bins + 1)
    which = np.clip(np.searchsorted(edges, logc, side="right") - 1, 0, bins - 1)
    order = np.lexsort((pts["loss"], which))  # by bin, then loss
    first = np.r_[True, which[order][1:] != which[order][:-1]]
    return order[first]


def fit_envelope(runs: Runs, bins: int = 20, use_curves: bool = True) -> EnvelopeFit:
    pts, used_curves = candidates(runs, use_curves)
    if len(pts["C"]) < 2:
        raise ScratchLMError(f"Approach 1 needs at least 2 runs or curve points, got {len(pts['C'])}")
    best = envelope_points(pts, bins)
    env = {k: pts[k][best] for k in ("C", "N", "D", "loss")}
    if len(best) < 2 or np.ptp(np.log(env["N"])) == 0:
        raise ScratchLMError(
            "Approach 1: the loss envelope has a single model size "
            f"({len(best)} compute bins): needs runs of several sizes over a range of compute"
        )
    k_n, a = fit_power_law(env["C"], env["N"], "Approach 1 N_opt(C)")
    k_d, b = fit_power_law(env["C"], env["D"], "Approach 1 D_opt(C)")
    return EnvelopeFit(Law(a, k_n, b, k_d), env, pts, used_curves)


def bootstrap_envelope(runs: Runs, samples: int, bins: int = 20, use_curves: bool = True, seed: int = 0) -> LawSamples:
    """Resample runs with replacement (a resampled run brings its whole curve) and refit."""
    rng = np.random.default_rng(seed)
    pts, _ = candidates(runs, use_curves)
    out = []
    for _ in range(samples):
        counts = np.bincount(rng.integers(0, len(runs), len(runs)), minlength=len(runs))
        keep = counts[pts["run"]] > 0  # a run drawn k times adds identical points: the minimum is unchanged
        sub = {k: v[keep] for k, v in pts.items()}
        best = envelope_points(sub, bins)
        c, n, d = sub["C"][best], sub["N"][best], sub["D"][best]
        if len(best) < 2 or np.ptp(np.log(n)) == 0:
            continue
        a, log_kn = np.polyfit(np.log(c), np.log(n), 1)
        b, log_kd = np.polyfit(np.log(c), np.log(d), 1)
        out.append((a, np.exp(log_kn), b, np.exp(log_kd)))
    arr = np.array(out).reshape(-1, 4)
    return LawSamples(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])
