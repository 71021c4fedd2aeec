"""Approaches 1 and 2 on synthetic runs from a known law, their bootstraps, and their bad inputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from synth import TRUE_A, isoflop_runs, true_n_opt, with_curves

from scratchlm.errors import ScratchLMError
from scratchlm.scaling.envelope import bootstrap_envelope, fit_envelope
from scratchlm.scaling.fit import fit_runs
from scratchlm.scaling.isoflop import bootstrap_isoflop, fit_isoflop, group_slices


def test_isoflop_recovers_the_exponent_and_minima():
    runs = isoflop_runs()
    fit = fit_isoflop(runs)
    assert len(fit.used) == 4
    print(f"approach 2: a = {fit.law.a:.4f} (truth {TRUE_A:.4f})")
    assert abs(fit.law.a - TRUE_A) < 0.02
    for s in fit.used:  # each parabola's vertex near the true optimum of its slice
        assert abs(np.log(s.n_opt / true_n_opt(s.c))) < 0.15
    assert np.isclose(fit.law.b, 1 - fit.law.a) and np.isclose(fit.law.k_d, 1 / (6 * fit.law.k_n))


def test_isoflop_bootstrap_interval_contains_the_truth():
    runs = isoflop_runs()
    fit = fit_isoflop(runs)
    s = bootstrap_isoflop(runs, fit, 300, seed=0)
    assert len(s) == 300
    lo, hi = np.percentile(s.a, [2.5, 97.5])
    print(f"approach 2 bootstrap: a in [{lo:.4f}, {hi:.4f}], truth {TRUE_A:.4f}")
    assert lo <= TRUE_A <= hi and hi - lo < 0.1


def test_slices_group_by_budget_or_by_compute_tolerance():
    runs = isoflop_runs(budgets=(1e18, 1e19))
    runs.c = runs.c * np.exp(np.random.default_rng(0).uniform(-0.05, 0.05, len(runs)))  # measured C scatters
    assert [len(s.runs) for s in group_slices(runs)] == [7, 7]
    runs.budget = np.where(np.arange(len(runs)) < 7, 1e18, 1e19)
    assert [s.c for s in group_slices(runs)] == [1e18, 1e19]


def test_envelope_with_curves_recovers_the_exponent():
    runs = with_curves(isoflop_runs(budgets=(1e18, 1e19, 1e20, 1e21), sizes=9))
    fit = fit_envelope(runs, bins=12)
    assert fit.used_curves
    print(f"approach 1: a = {fit.law.a:.4f}, b = {fit.law.b:.4f} (truth a {TRUE_A:.4f})")
    assert abs(fit.law.a - TRUE_A) < 0.06
    assert abs(fit.law.a + fit.law.b - 1) < 0.05  # N D ~ C / 6 along the envelope
    s = bootstrap_envelope(runs, 50, bins=12)
    assert len(s) == 50 and np.percentile(s.a, 2.5) < fit.law.a < np.percentile(s.a, 97.5)


def test_envelope_without_curves_uses_final_points():
    runs = isoflop_runs(sizes=9, noise=0.0)
    fit = fit_envelope(runs, bins=4)
    assert not fit.used_curves and len(fit.points["C"]) == 4
    assert abs(fit.law.a - TRUE_A) < 0.05


def test_single_compute_level_is_a_clear_error():
    runs = isoflop_runs(budgets=(1e19,))
    with pytest.raises(ScratchLMError, match=">= 2 compute levels; all 7 runs are at one level"):
        fit_isoflop(runs)


def test_slices_with_too_few_sizes_are_skipped_with_a_warning(caplog):
    runs = isoflop_runs(budgets=(1e18, 1e19, 1e20), sizes=7)  # runs 0-6: 1e18, 7-13: 1e19, 14-20: 1e20
    keep = np.ones(len(runs), bool)
    keep[9:14] = False  # the 1e19 slice keeps 2 sizes
    with caplog.at_level(logging.WARNING):
        fit = fit_isoflop(runs.subset(keep, "test"))
    assert len(fit.used) == 2
    assert "C=1e+19 (2 runs) not used: 2 distinct model sizes" in caplog.text
    with pytest.raises(ScratchLMError, match="needs >= 2 usable IsoFLOP slices, got 0"):
        fit_isoflop(isoflop_runs(budgets=(1e18, 1e19), sizes=2))


def test_extrapolated_minimum_is_excluded_unless_allowed():
    runs = isoflop_runs(budgets=(1e18, 1e19, 1e20), sizes=7, noise=0.0)
    left_of_opt = runs.n < 0.9 * true_n_opt(runs.c)
    runs = runs.subset(left_of_opt | (runs.c > 5e19), "test")  # 1e18, 1e19: only sizes below N_opt
    with pytest.raises(ScratchLMError, match="got 1 .*outside the sampled sizes"):
        fit_isoflop(runs)
    fit = fit_isoflop(runs, allow_extrapolation=True)
    assert len(fit.used) == 3 and abs(fit.law.a - TRUE_A) < 0.05  # extrapolated vertices are biased


def test_fit_runs_rejects_bad_requests():
    runs = isoflop_runs()
    with pytest.raises(ScratchLMError, match="unknown approach 4"):
        fit_runs(runs, 4)
    with pytest.raises(ScratchLMError, match="needs at least 6 runs, got 4"):
        fit_runs(runs.subset(np.arange(len(runs)) < 4, "test"), 3)
