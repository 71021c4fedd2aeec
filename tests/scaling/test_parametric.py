"""Approach 3: analytic gradient, batched L-BFGS, recovery of a known law, bootstrap coverage."""

from __future__ import annotations

import numpy as np
import pytest
from synth import TRUE, TRUE_A, scattered_runs

from scratchlm.scaling.bootstrap import bootstrap_parametric, law_samples, params_of
from scratchlm.scaling.lbfgs import batched_lbfgs
from scratchlm.scaling.parametric import allocation, fit_parametric, objective, paper_grid


def test_paper_grid_has_4500_distinct_starts():
    g = paper_grid()
    assert g.shape == (4500, 5) and len(np.unique(g, axis=0)) == 4500
    assert g[:, 3].min() == 0 and g[:, 3].max() == 2 and g[:, 0].max() == 25 and g[:, 2].min() == -1


@pytest.mark.parametrize("weighted", [False, True])
def test_analytic_gradient_matches_finite_differences(weighted):
    runs = scattered_runs(40)
    ln, ld, ll = np.log(runs.n), np.log(runs.d), np.log(runs.loss)
    rng = np.random.default_rng(1)
    # near the truth (residuals inside and outside the Huber delta) and far from it
    theta = np.array([[np.log(400), np.log(400), np.log(1.7), 0.34, 0.28], [3.0, 9.0, 0.2, 0.5, 0.7]])
    weights = rng.integers(0, 3, (2, 40)).astype(float) if weighted else None
    f, g = objective(theta, ln, ld, ll, weights)
    h = 1e-6
    num = np.zeros_like(g)
    for j in range(5):
        step = np.zeros(5)
        step[j] = h
        num[:, j] = (
            objective(theta + step, ln, ld, ll, weights)[0] - objective(theta - step, ln, ld, ll, weights)[0]
        ) / (2 * h)
    err = np.abs(g - num).max() / np.abs(num).max()
    print(f"max relative gradient error {err:.2e}")
    assert err < 1e-5
    # rows are independent: one row alone gives the same value
    assert np.allclose(objective(theta[1:], ln, ld, ll, None if weights is None else weights[1:])[0], f[1:])


def test_batched_lbfgs_solves_independent_rosenbrocks():
    shifts = np.array([1.0, 2.0, -0.5])

    def fun(x, rows):
        s = shifts[rows]
        u, v = x[:, 0] - s, x[:, 1] - s**2
        f = (1 - u) ** 2 + 100 * (v - u * u) ** 2  # minimum at u = 1, v = 1
        gu = -2 * (1 - u) - 400 * u * (v - u * u)
        return f, np.stack([gu, 200 * (v - u * u)], axis=1)

    x, f, iters = batched_lbfgs(fun, np.zeros((3, 2)), max_iter=500)
    assert np.allclose(x[:, 0], shifts + 1, atol=1e-5) and np.allclose(x[:, 1], shifts**2 + 1, atol=1e-4)
    assert f.max() < 1e-10


@pytest.fixture(scope="module")
def synthetic_fit():
    runs = scattered_runs(80, noise=0.005)
    fit = fit_parametric(np.log(runs.n), np.log(runs.d), runs.loss)
    return runs, fit


def test_recovers_known_parameters(synthetic_fit):
    _, fit = synthetic_fit
    p = fit.params
    print({k: round(float(v), 4) for k, v in p.items()})
    assert abs(p["E"] - TRUE["E"]) < 0.05
    assert abs(p["alpha"] - TRUE["alpha"]) < 0.03 and abs(p["beta"] - TRUE["beta"]) < 0.03
    assert abs(np.log(p["A"] / TRUE["A"])) < 0.5 and abs(np.log(p["B"] / TRUE["B"])) < 0.5
    assert abs(allocation(p)["a"] - TRUE_A) < 0.03


def test_bootstrap_intervals_contain_the_truth(synthetic_fit):
    runs, fit = synthetic_fit
    theta = bootstrap_parametric(np.log(runs.n), np.log(runs.d), runs.loss, fit, samples=60, seed=0)
    assert theta.shape == (60, 5) and np.isfinite(theta).all()
    samples = params_of(theta)
    for k in ("E", "alpha", "beta", "A", "B"):
        lo, hi = np.percentile(samples[k], [2.5, 97.5])
        se = np.std(samples[k], ddof=1)
        print(f"{k}: truth {TRUE[k]}, fit {fit.params[k]:.4g}, 95% CI [{lo:.4g}, {hi:.4g}], se {se:.3g}")
        assert lo <= TRUE[k] <= hi
        assert abs(fit.params[k] - TRUE[k]) < 3 * se
    a = law_samples(theta).a
    assert np.percentile(a, 2.5) <= TRUE_A <= np.percentile(a, 97.5)


def test_allocation_is_consistent_with_the_loss_minimum():
    """N_opt from the closed form minimises L(N, C / 6N) along the IsoFLOP line."""
    from scratchlm.scaling.parametric import predict_loss

    al = allocation(TRUE)
    c = 1e21
    n = np.logspace(8, 11, 20001)
    best = n[np.argmin(predict_loss(TRUE, n, c / (6 * n)))]
    assert abs(np.log(best / (al["k_N"] * c ** al["a"]))) < 1e-3
    assert np.isclose(al["k_D"] * c ** al["b"] * al["k_N"] * c ** al["a"], c / 6)
