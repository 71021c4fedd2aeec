"""Bootstrap of the Approach 3 fit: resample runs with replacement, refit, summarise.

A resample is a vector of counts over the runs (multinomial), i.e. per-point weights of the Huber
objective, so all resamples refit at once in one batched L-BFGS: each starts from the full-data
optimum, the other distinct optima the full fit found, and a few points of the paper's grid, and
keeps its lowest objective. Derived quantities (a, b, G, N_opt, D_opt, tokens per parameter and the
loss at the optimum for a budget C) are computed per resample, so their intervals carry the
parameters' correlations.
"""

from __future__ import annotations

import numpy as np

from scratchlm.scaling.laws import LawSamples
from scratchlm.scaling.lbfgs import batched_lbfgs
from scratchlm.scaling.parametric import ParametricFit, objective, paper_grid


def resample_counts(n_points: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """(samples, n_points) counts of each point in a with-replacement resample of n_points."""
    return rng.multinomial(n_points, np.full(n_points, 1.0 / n_points), size=samples).astype(np.float64)


def bootstrap_parametric(
    log_n: np.ndarray,
    log_d: np.ndarray,
    loss: np.ndarray,
    fit: ParametricFit,
    samples: int = 200,
    starts_per_sample: int = 4,
    seed: int = 0,
    max_iter: int = 200,
) -> np.ndarray:
    """(samples, 5) refitted parameter rows (a, b, e, alpha, beta), one per resample."""
    rng = np.random.default_rng(seed)
    counts = resample_counts(len(loss), samples, rng)
    grid = paper_grid()
    extra = max(0, starts_per_sample - len(fit.candidates))
    starts = np.concatenate([fit.candidates[:starts_per_sample], grid[rng.choice(len(grid), extra, replace=False)]])
    k = len(starts)
    x0 = np.tile(starts, (samples, 1))  # row r = resample r // k, start r % k
    weights = np.repeat(counts, k, axis=0)  # (samples * k, n)
    log_loss = np.log(loss)

    def fun(x, rows):
        return objective(x, log_n, log_d, log_loss, weights[rows])

    x, f, _ = batched_lbfgs(fun, x0, max_iter=max_iter)
    best = np.argmin(f.reshape(samples, k), axis=1)
    return x.reshape(samples, k, 5)[np.arange(samples), best]


def params_of(theta: np.ndarray) -> dict[str, np.ndarray]:
    """Rows (B, 5) -> {"E", "A", "B", "alpha", "beta"} arrays (B,)."""
    a, b, e, alpha, beta = theta.T
    return {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta}


def law_samples(theta: np.ndarray) -> LawSamples:
    """The allocation law N_opt = k_N C^a, D_opt = k_D C^b of each parameter row (see parametric.allocation)."""
    p = params_of(theta)
    a = p["beta"] / (p["alpha"] + p["beta"])
    b = p["alpha"] / (p["alpha"] + p["beta"])
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1.0 / (p["alpha"] + p["beta"]))
    return LawSamples(a, G * 6.0**-a, b, 6.0**-b / G)
