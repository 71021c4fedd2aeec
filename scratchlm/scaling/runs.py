"""The runs table: one row per training run (parameters N, tokens D, compute C, final loss, optional
loss curve), read from JSONL, CSV, JSON or a `scratchlm sweep` / `scratchlm scaling sweep` directory.

    runs = load_runs("runs.jsonl")                       # or results.json / results.csv / a sweep dir
    runs = load_runs("chinchilla.csv", columns={"N": "Model Size"}, drop_highest_loss=5)

Column names are matched case-insensitively (spaces and dashes read as underscores); the first
alias present in the file wins (`COLUMNS`). A mapping `columns={"N": "my_col"}` overrides them.
When one of C and D is missing it is derived with the standard approximation C = 6 N D (Kaplan et
al. 2020): C = 6 N D, or D = C / (6 N). A `scratchlm sweep` results table maps as: params -> N
(all parameters, embeddings included), tokens -> D, train_flops (tokens x the model's own training
FLOPs per token) -> C, val_loss (the final validation loss) -> loss; failed runs are skipped.

Bad input: a non-positive or non-numeric N, D, C or loss is an error naming the run and column; a
run whose loss is missing or NaN (a failed or diverged run) or whose status is "failed" is left
out with a warning naming it, and listed in `Runs.excluded`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scratchlm.errors import ScratchLMError
from scratchlm.io import check_input_file

log = logging.getLogger(__name__)

# field -> accepted column names, in order of preference
COLUMNS: dict[str, tuple[str, ...]] = {
    "N": ("n", "params", "parameters", "num_params", "model_size"),
    "D": ("d", "tokens", "training_tokens", "train_tokens"),
    "C": ("c", "flops", "compute", "compute_budget", "train_flops", "training_flop", "training_flops"),
    "loss": ("loss", "val_loss", "final_loss", "best_val_loss"),
    "name": ("name", "run", "run_name"),
    "budget": ("budget",),  # the IsoFLOP budget a run was planned for (written by `scaling sweep`)
}


@dataclass
class Runs:
    """Columns as arrays of equal length; curves[i] is (k, 2) [tokens so far, loss] or None."""

    names: list[str]
    n: np.ndarray  # parameters
    d: np.ndarray  # training tokens
    c: np.ndarray  # training compute, FLOPs
    loss: np.ndarray  # final loss
    curves: list[np.ndarray | None] = field(default_factory=list)
    budget: np.ndarray | None = None  # planned IsoFLOP budget per run (NaN where unknown)
    excluded: list[dict[str, str]] = field(default_factory=list)  # {"name", "reason"}
    columns: dict[str, str] = field(default_factory=dict)  # field -> column used, or how it was derived
    source: str = ""

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, keep: np.ndarray, reason: str | None = None) -> Runs:
        """The runs where `keep` is True; the others are recorded as excluded with `reason`."""
        keep = np.asarray(keep, dtype=bool)
        dropped = [{"name": n, "reason": reason or "excluded"} for n, k in zip(self.names, keep) if not k]
        for row in dropped:
            log.warning("run %s excluded: %s", row["name"], row["reason"])
        return Runs(
            [n for n, k in zip(self.names, keep) if k],
            self.n[keep],
            self.d[keep],
            self.c[keep],
            self.loss[keep],
            [c for c, k in zip(self.curves, keep) if k],
            None if self.budget is None else self.budget[keep],
            self.excluded + dropped,
            self.columns,
            self.source,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "used": len(self),
            "columns": self.columns,
            "excluded": self.excluded,
            "with_curves": sum(c is not None for c in self.curves),
        }


def _norm(key: str) -> str:
    return key.strip().lower().replace(" ", "_").replace("-", "_")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .json (a list, or {"runs": [...]}) or .csv file, or of a sweep directory."""
    if path.is_dir():
        for name in ("runs.jsonl", "results.json", "runs/results.json"):
            if (path / name).is_file():
                return _read_rows(path / name)
        raise ScratchLMError(f"{path} holds no runs table (runs.jsonl or a sweep's results.json)")
    check_input_file(path, "runs table")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ScratchLMError(
            f"runs table {path} is not a text file (not UTF-8: {e.reason} at byte {e.start})"
        ) from None
    if "\x00" in text:
        raise ScratchLMError(f"runs table {path} is not a text file (it holds NUL bytes)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif suffix == ".json":
            data = json.loads(text)
            rows = data.get("runs") if isinstance(data, dict) else data
        elif suffix == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
        else:
            raise ScratchLMError(f"runs table {path}: unknown format {suffix!r} (expected .jsonl, .json or .csv)")
    except json.JSONDecodeError as e:
        raise ScratchLMError(f"runs table {path} is not valid JSON: {e}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ScratchLMError(f"runs table {path}: expected a list of objects, one per run")
    if not rows:
        raise ScratchLMError(f"runs table {path} has no runs")
    return rows


def _resolve_columns(rows: list[dict[str, Any]], overrides: dict[str, str]) -> dict[str, str]:
    """field -> actual key in the rows, from the user's mapping or the first alias present."""
    keys: dict[str, str] = {}
    for row in rows:
        for k in row:
            keys.setdefault(_norm(k), k)
    out = {}
    for fld, aliases in COLUMNS.items():
        if fld in overrides:
            if _norm(overrides[fld]) not in keys:
                raise ScratchLMError(f"column {overrides[fld]!r} (given for {fld}) is not in the runs table")
            out[fld] = keys[_norm(overrides[fld])]
            continue
        found = next((keys[a] for a in aliases if a in keys), None)
        if found is not None:
            out[fld] = found
    unknown = set(overrides) - set(COLUMNS)
    if unknown:
        raise ScratchLMError(f"unknown field(s) {sorted(unknown)} in the column mapping (fields: {', '.join(COLUMNS)})")
    return out


def _number(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)


def _curve(row: dict[str, Any]) -> np.ndarray | None:
    """[[tokens, loss], ...] from "curve" (a list or a JSON string) or "curve_tokens" + "curve_loss"."""
    raw = row.get("curve")
    if isinstance(raw, str) and raw.strip():
        raw = json.loads(raw)
    if raw is None and row.get("curve_tokens") is not None:
        toks, losses = row["curve_tokens"], row["curve_loss"]
        toks, losses = (json.loads(x) if isinstance(x, str) else x for x in (toks, losses))
        raw = list(zip(toks, losses))
    if not raw:
        return None
    arr = np.asarray(raw, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(arr).all(1) & (arr[:, 0] > 0) & (arr[:, 1] > 0)
    return arr[ok] if ok.any() else None


def runs_from_rows(rows: list[dict[str, Any]], columns: dict[str, str] | None = None, source: str = "") -> Runs:
    """Build the table from dict rows (see the module docstring for names, derivation and checks)."""
    cols = _resolve_columns(rows, columns or {})
    for need in ("N", "loss"):
        if need not in cols:
            aliases = ", ".join(COLUMNS[need])
            raise ScratchLMError(f"runs table {source}: no {need} column (expected one of: {aliases})")
    if "C" not in cols and "D" not in cols:
        raise ScratchLMError(f"runs table {source}: needs a compute (C) or a tokens (D) column, found neither")
    used = dict(cols)
    if "C" not in cols:
        used["C"] = "derived: C = 6 N D"
    if "D" not in cols:
        used["D"] = "derived: D = C / (6 N)"

    names, n, d, c, loss, curves, budget, excluded = [], [], [], [], [], [], [], []
    for i, row in enumerate(rows):
        name = (
            str(row.get(cols["name"])) if "name" in cols and row.get(cols["name"]) not in (None, "") else f"row {i + 1}"
        )
        if str(row.get("status", "")).startswith("failed"):
            excluded.append({"name": name, "reason": f"failed run ({row.get('error') or 'no error message'})"})
            continue
        vals = {}
        for fld in ("N", "D", "C", "loss"):
            if fld not in cols:
                continue
            try:
                vals[fld] = _number(row.get(cols[fld]))
            except (TypeError, ValueError):
                raise ScratchLMError(f"run {name}: {cols[fld]} = {row.get(cols[fld])!r} is not a number") from None
        if not math.isfinite(vals["loss"]):
            excluded.append({"name": name, "reason": f"loss is {row.get(cols['loss'])!r} (failed or diverged run?)"})
            continue
        for fld, v in vals.items():
            if not (math.isfinite(v) and v > 0):
                raise ScratchLMError(
                    f"run {name}: {cols[fld]} = {row.get(cols[fld])!r}; {fld} must be a positive number"
                )
        N = vals["N"]
        D = vals["D"] if "D" in vals else vals["C"] / (6 * N)
        C = vals["C"] if "C" in vals else 6 * N * D
        names.append(name)
        n.append(N), d.append(D), c.append(C), loss.append(vals["loss"])
        try:
            curves.append(_curve(row))
        except (ValueError, TypeError, json.JSONDecodeError):
            raise ScratchLMError(f"run {name}: its loss curve is not a list of [tokens, loss] pairs") from None
        budget.append(_number(row.get(cols["budget"])) if "budget" in cols else math.nan)
    for row in excluded:
        log.warning("run %s excluded: %s", row["name"], row["reason"])
    if not names:
        raise ScratchLMError(f"runs table {source}: no usable runs ({len(excluded)} excluded)")
    return Runs(
        names,
        np.array(n),
        np.array(d),
        np.array(c),
        np.array(loss),
        curves,
        np.array(budget) if "budget" in cols else None,
        excluded,
        used,
        source,
    )


def load_runs(
    path: str | Path,
    columns: dict[str, str] | None = None,
    drop_highest_loss: int = 0,
    curves_from_run_dirs: bool = True,
) -> Runs:
    """Read a runs table (see the module docstring). `drop_highest_loss=k` leaves out the k runs of
    highest loss (Besiroglu et al. 2024 drop 5 such outliers from the Chinchilla data; see
    benchmarks/bench_scaling_fit.py). Sweep rows with a `run_dir` get their training-loss curve
    from its metrics.jsonl when `curves_from_run_dirs`."""
    path = Path(path)
    if drop_highest_loss < 0:
        raise ScratchLMError(f"the number of highest-loss runs to drop must be >= 0, got {drop_highest_loss}")
    rows = _read_rows(path)
    if curves_from_run_dirs:
        for row in rows:
            if row.get("curve") is None and row.get("run_dir"):
                curve = curve_from_metrics(Path(row["run_dir"]))
                if curve:
                    row["curve"] = curve
    runs = runs_from_rows(rows, columns, source=str(path))
    if drop_highest_loss:
        if drop_highest_loss >= len(runs):
            raise ScratchLMError(f"cannot drop {drop_highest_loss} outliers from {len(runs)} runs")
        keep = np.ones(len(runs), bool)
        keep[np.argsort(runs.loss)[-drop_highest_loss:]] = False
        runs = runs.subset(keep, f"outlier: one of the {drop_highest_loss} highest losses")
    return runs


def curve_from_metrics(run_dir: Path) -> list[list[float]] | None:
    """[[tokens, train loss], ...] from a run directory's metrics.jsonl (None when absent)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("kind") == "train" and isinstance(rec.get("loss"), (int, float)) and rec.get("tokens"):
            out.append([float(rec["tokens"]), float(rec["loss"])])
    return out or None
