"""Synthetic runs from a known scaling law, shared by the scaling tests."""

from __future__ import annotations

import numpy as np

from scratchlm.scaling.runs import Runs

# Hoffmann et al. 2022's fitted law (their eq. 10): the truth the fits must recover.
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
TRUE_A = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])  # N_opt exponent, 0.4516


def law(n, d, p=TRUE):
    return p["E"] + p["A"] / np.power(n, p["alpha"]) + p["B"] / np.power(d, p["beta"])


def true_n_opt(c, p=TRUE):
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    return G * (c / 6) ** (p["beta"] / (p["alpha"] + p["beta"]))


def scattered_runs(n_runs: int = 80, noise: float = 0.01, seed: int = 0) -> Runs:
    """Runs at random (N, D): N in [1e7, 1e10], D in [1e9, 1e12], log-uniform; loss x exp(noise)."""
    rng = np.random.default_rng(seed)
    n = 10 ** rng.uniform(7, 10, n_runs)
    d = 10 ** rng.uniform(9, 12, n_runs)
    loss = law(n, d) * np.exp(rng.normal(0, noise, n_runs))
    return Runs([f"r{i}" for i in range(n_runs)], n, d, 6 * n * d, loss, [None] * n_runs)


def isoflop_runs(budgets=(1e18, 1e19, 1e20, 1e21), sizes: int = 7, noise: float = 0.003, seed: int = 0) -> Runs:
    """IsoFLOP slices: per budget, `sizes` models log-spaced over [N_opt / 6, 6 N_opt], D = C / (6 N)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        for n in true_n_opt(c) * np.logspace(-np.log10(6), np.log10(6), sizes):
            rows.append((n, c / (6 * n), c))
    n, d, c = (np.array(x) for x in zip(*rows))
    loss = law(n, d) * np.exp(rng.normal(0, noise, len(n)))
    return Runs([f"r{i}" for i in range(len(n))], n, d, c, loss, [None] * len(n))


def with_curves(runs: Runs, points: int = 30) -> Runs:
    """Give each run a loss curve: L(N, t) at log-spaced token counts t up to its D."""
    curves = []
    for n, d in zip(runs.n, runs.d):
        t = np.logspace(np.log10(d) - 2, np.log10(d), points)
        curves.append(np.stack([t, law(n, t)], axis=1))
    runs.curves = curves
    return runs
