"""One entry point for the three approaches: fit, bootstrap, predict, and write fit.json + plots.

    runs = load_runs("runs.jsonl")
    result = fit_runs(runs, approach=3, bootstrap=200)
    result.law.n_opt(1e21), result.params                   # N_opt at 1e21 FLOPs; E, A, B, alpha, beta
    write_fit(result, "out/", predict_at=[1e21])             # out/fit.json and the PNGs

Every approach yields N_opt = k_N C^a and D_opt = k_D C^b (`laws.Law`); Approach 3 also the loss
L(N, D). With `bootstrap=B`, runs are resampled B times with replacement and refitted: every
reported quantity then carries a standard error (the bootstrap standard deviation) and a 95%
percentile interval.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scratchlm.errors import ScratchLMError
from scratchlm.scaling.laws import Law, LawSamples, summarize
from scratchlm.scaling.runs import Runs

log = logging.getLogger(__name__)

APPROACHES = {
    1: "minimum loss per compute bin over runs / loss curves (Hoffmann et al. 2022, approach 1)",
    2: "IsoFLOP parabolas (Hoffmann et al. 2022, approach 2)",
    3: "parametric L(N, D) = E + A / N^alpha + B / D^beta, Huber on log loss (Besiroglu et al. 2024)",
}
MIN_RUNS_PARAMETRIC = 6  # 5 parameters
FORMAT = "scratchlm.scaling.fit"
VERSION = 1


@dataclass
class FitResult:
    approach: int
    runs: Runs
    law: Law
    detail: Any  # EnvelopeFit, IsoFlopFit or ParametricFit
    samples: LawSamples | None = None
    theta_samples: np.ndarray | None = None  # approach 3: (B, 5) bootstrap parameter rows
    timings: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, float] | None:
        return self.detail.params if self.approach == 3 else None


def fit_runs(
    runs: Runs,
    approach: int,
    bootstrap: int = 0,
    seed: int = 0,
    bins: int = 20,
    tol: float = 0.25,
    allow_extrapolation: bool = False,
) -> FitResult:
    """Fit one approach to the runs (see the module docstring); `bootstrap` resamples (0 = none)."""
    if approach not in APPROACHES:
        raise ScratchLMError(f"unknown approach {approach!r}: choose 1, 2 or 3")
    if bootstrap < 0:
        raise ScratchLMError(f"--bootstrap must be >= 0, got {bootstrap}")
    opts = {"bootstrap": bootstrap, "seed": seed}
    t0 = time.perf_counter()
    theta_samples = samples = None
    if approach == 1:
        from scratchlm.scaling.envelope import bootstrap_envelope, fit_envelope

        detail = fit_envelope(runs, bins)
        law, opts["bins"], opts["used_curves"] = detail.law, bins, detail.used_curves
        t1 = time.perf_counter()
        if bootstrap:
            samples = bootstrap_envelope(runs, bootstrap, bins, seed=seed)
    elif approach == 2:
        from scratchlm.scaling.isoflop import bootstrap_isoflop, fit_isoflop

        detail = fit_isoflop(runs, tol, allow_extrapolation)
        law, opts["tol"], opts["allow_extrapolation"] = detail.law, tol, allow_extrapolation
        t1 = time.perf_counter()
        if bootstrap:
            samples = bootstrap_isoflop(runs, detail, bootstrap, seed, allow_extrapolation)
    else:
        from scratchlm.scaling.bootstrap import bootstrap_parametric, law_samples
        from scratchlm.scaling.parametric import allocation, fit_parametric

        if len(runs) < MIN_RUNS_PARAMETRIC:
            raise ScratchLMError(
                f"Approach 3 fits 5 parameters and needs at least {MIN_RUNS_PARAMETRIC} runs, got {len(runs)}"
            )
        if len(np.unique(runs.n)) < 2 or len(np.unique(runs.d)) < 2:
            raise ScratchLMError("Approach 3 needs runs of at least 2 model sizes and 2 token counts")
        log_n, log_d = np.log(runs.n), np.log(runs.d)
        detail = fit_parametric(log_n, log_d, runs.loss)
        al = allocation(detail.params)
        law = Law(al["a"], al["k_N"], al["b"], al["k_D"])
        t1 = time.perf_counter()
        if bootstrap:
            theta_samples = bootstrap_parametric(log_n, log_d, runs.loss, detail, bootstrap, seed=seed)
            samples = law_samples(theta_samples)
    timings = {"fit_s": t1 - t0}
    if bootstrap:
        timings["bootstrap_s"] = time.perf_counter() - t1
        if samples is not None and len(samples) < bootstrap:
            log.warning(
                "%d of %d bootstrap resamples gave no fit (too few slices/sizes left)",
                bootstrap - len(samples),
                bootstrap,
            )
    return FitResult(approach, runs, law, detail, samples, theta_samples, timings, opts)


# ---------------------------------------------------------------------------------------------
# JSON


def _law_json(result: FitResult) -> dict[str, Any]:
    s = result.samples
    law = result.law
    out = {
        "form": "N_opt = k_N * C^a, D_opt = k_D * C^b",
        "a": summarize(law.a, None if s is None else s.a),
        "b": summarize(law.b, None if s is None else s.b),
        "k_N": summarize(law.k_n, None if s is None else s.k_n),
        "k_D": summarize(law.k_d, None if s is None else s.k_d),
    }
    if result.approach == 3:
        from scratchlm.scaling.parametric import allocation

        out["G"] = summarize(allocation(result.params)["G"], None if s is None else s.k_n * 6.0**s.a)
        out["note"] = "from L(N, D) with C = 6 N D: N_opt = G (C / 6)^a, a = beta / (alpha + beta)"
    return out


def _detail_json(result: FitResult) -> dict[str, Any]:
    d = result.detail
    if result.approach == 1:
        return {
            "used_curves": d.used_curves,
            "envelope": [
                {"C": float(c), "N": float(n), "D": float(t), "loss": float(l)}
                for c, n, t, l in zip(d.points["C"], d.points["N"], d.points["D"], d.points["loss"])
            ],
        }
    if result.approach == 2:
        return {
            "slices": [
                {
                    "C": s.c,
                    "runs": len(s.runs),
                    "N_opt": s.n_opt if np.isfinite(s.n_opt) else None,
                    "loss_opt": s.loss_opt if np.isfinite(s.loss_opt) else None,
                    "used": not s.skipped,
                    **({"skipped": s.skipped} if s.skipped else {}),
                }
                for s in d.slices
            ]
        }
    from scratchlm.scaling.bootstrap import params_of

    ps = None if result.theta_samples is None else params_of(result.theta_samples)
    params = {k: summarize(v, None if ps is None else ps[k]) for k, v in d.params.items()}
    return {
        "params": params,
        "objective": d.objective,
        "starts": d.starts,
        "huber_delta": 1e-3,
        "law": "L(N, D) = E + A / N^alpha + B / D^beta",
    }


def result_json(result: FitResult, predictions: list[dict[str, Any]] | None = None, plots=()) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "approach": result.approach,
        "method": APPROACHES[result.approach],
        "runs": result.runs.describe(),
        "options": result.options,
        **_detail_json(result),
        "allocation": _law_json(result),
        "predictions": predictions or [],
        "bootstrap": {
            "samples": len(result.samples) if result.samples is not None else 0,
            "seed": result.options["seed"],
        },
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "plots": list(plots),
    }


def write_fit(
    result: FitResult,
    out_dir: str | Path,
    predict_at: list[float] = (),
    base_model=None,
    seq_len: int | None = None,
    rule=None,
) -> dict[str, Any]:
    """Write out_dir/fit.json (parameters, intervals, predictions) and the plots; returns the JSON."""
    from scratchlm.io import write_json
    from scratchlm.scaling.plots import plot_fit
    from scratchlm.scaling.predict import predict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = predict(result, list(predict_at), base_model, seq_len, rule)
    plots = plot_fit(result, out_dir, predict_at)
    data = result_json(result, predictions, [p.name for p in plots])
    write_json(out_dir / "fit.json", data)
    return data
