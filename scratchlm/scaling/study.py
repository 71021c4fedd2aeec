"""`scratchlm scaling sweep`: plan an IsoFLOP grid, train it with `scratchlm.train.sweep`, collect
the runs table, fit Approaches 2 and 3, plot.

    out_dir/
      plan.json        the study config and the planned runs (shape, steps, tokens, FLOPs)
      sweep.toml       the sweep spec (also runnable by hand: scratchlm sweep run out_dir/sweep.toml)
      runs/            one training run per point + the sweep's results.{csv,md,json,png}
      runs.jsonl       the runs table: name, budget, N, N_non_embedding, D, C, C_6ND, loss, curve, ...
      approach2/, approach3/   fit.json + plots (or the reason in study.json when a fit was not possible)
      study.json       summary: fits, exponents, failed runs

N is every parameter of the model, embeddings included (the Chinchilla convention, Hoffmann et al.
2022; Kaplan et al. 2020 count non-embedding parameters, kept as N_non_embedding: fit on it with
`scaling fit --columns N=N_non_embedding`). D is the tokens trained on; C is D times the model's own
training FLOPs per token (what the budgets were planned with); C_6ND is the 6 N D approximation.
The loss is the final validation loss (the last training loss when no data.valid is set).

Interrupting and rerunning the same command resumes: `run_sweep` skips runs that wrote their
summary.json and resumes those with checkpoints; the fit runs again on the whole table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from scratchlm.errors import ScratchLMError
from scratchlm.scaling.config import StudyConfig
from scratchlm.scaling.plan import PlanRow, plan_json, plan_study, sweep_spec, train_config, write_spec

log = logging.getLogger(__name__)


def collect_runs(plan: list[PlanRow], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One runs-table row per planned run, from the sweep's result rows (same order)."""
    from scratchlm.scaling.runs import curve_from_metrics

    table = []
    for p, r in zip(plan, results):
        row: dict[str, Any] = {"name": r["name"], "budget": p.budget, "status": r.get("status")}
        row.update(d_model=p.d_model, n_layers=p.n_layers, n_heads=p.n_heads)
        if r.get("status") == "failed":
            table.append({**row, "loss": None, "error": r.get("error")})
            continue
        n, d = int(r["params"]), int(r["tokens"])
        loss = r.get("val_loss")
        row.update(N=n, N_non_embedding=p.params_non_embedding, D=d, C=d * r["train_flops_per_token"], C_6ND=6 * n * d)
        row.update(
            loss=loss if loss is not None else r.get("final_loss"), loss_kind="val" if loss is not None else "train"
        )
        row["run_dir"] = r.get("run_dir")
        row["curve"] = curve_from_metrics(Path(r["run_dir"])) if r.get("run_dir") else None
        table.append(row)
    return table


def write_runs_table(rows: list[dict[str, Any]], path: Path) -> None:
    from scratchlm.io import atomic_write

    with atomic_write(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def fit_study(study: StudyConfig, out: Path, train_cfg=None) -> dict[str, Any]:
    """Fit approaches 2 and 3 to out/runs.jsonl; a fit that is not possible is reported, not raised."""
    from scratchlm.scaling.fit import fit_runs, write_fit
    from scratchlm.scaling.runs import load_runs

    cfg = train_cfg or train_config(study)
    try:
        runs = load_runs(out / "runs.jsonl", curves_from_run_dirs=False)
    except ScratchLMError as e:  # e.g. every run failed
        log.warning("no fit: %s", e)
        return {f"approach{a}": {"error": str(e)} for a in (2, 3)}
    top = max(study.budgets)
    fits: dict[str, Any] = {}
    for approach in (2, 3):
        try:
            result = fit_runs(runs, approach, bootstrap=study.bootstrap)
            data = write_fit(
                result, out / f"approach{approach}", [top * 10, top * 100], cfg.model, cfg.context, study.shape
            )
            fits[f"approach{approach}"] = {
                "a": data["allocation"]["a"],
                "b": data["allocation"]["b"],
                "dir": f"approach{approach}",
            }
            if approach == 3:
                fits["approach3"]["params"] = data["params"]
        except ScratchLMError as e:
            log.warning("approach %d not fitted: %s", approach, e)
            fits[f"approach{approach}"] = {"error": str(e)}
    return fits


def run_study(study: StudyConfig, progress: bool = True) -> dict[str, Any]:
    from scratchlm.config import to_dict
    from scratchlm.io import write_json
    from scratchlm.train.sweep import load_spec, run_sweep

    out = Path(study.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = train_config(study)
    plan = plan_study(study)
    write_json(out / "plan.json", {"study": to_dict(study), "runs": plan_json(plan)})
    write_spec(sweep_spec(study, plan, out / "runs"), out / "sweep.toml")
    spec = load_spec(out / "sweep.toml")  # the sweep's own checks: every key and value before any run
    results = run_sweep(spec, progress=progress)
    table = collect_runs(plan, results)
    write_runs_table(table, out / "runs.jsonl")
    failed = [r["name"] for r in table if r.get("status") == "failed"]
    fits = fit_study(study, out, cfg)
    summary = {"runs": len(table), "failed": failed, "fits": fits, "runs_table": str(out / "runs.jsonl")}
    write_json(out / "study.json", summary)
    return summary
