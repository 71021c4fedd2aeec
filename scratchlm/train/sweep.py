"""Sweeps: one training run per point of a grid (or list) over any config keys, then a results table.

    scratchlm sweep run sweep.toml            # runs (resumable: finished points are skipped)
    scratchlm sweep report runs/sweep-lr      # the table and plot again

A spec (TOML):

    preset = "quickstart"                    # base train preset (name or .toml path)
    out_dir = "runs/sweep-lr"                # one sub-directory per point
    parallel = 1                             # training processes at once
    [set]                                    # overrides shared by every point
    "data.train" = "runs/quickstart/train.bin"
    [grid]                                   # cartesian product ...
    "optim.lr" = [1e-3, 3e-3, 1e-2]
    "model.n_layers" = [2, 4]
    # ... or instead an explicit list of points:
    # [[points]]
    # "optim.lr" = 1e-3

Each point runs `python -m scratchlm train` in its own process (a crash or a NaN of one point
cannot take the others down); its stdout/stderr go to `<point>/train.log`. Failed points are listed
in the table with the last line of their log, not hidden.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.config import read_toml
from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_write, write_json

SPEC_KEYS = {"preset", "out_dir", "parallel", "set", "grid", "points", "name"}


@dataclass
class SweepSpec:
    preset: str
    out_dir: Path
    points: list[dict[str, Any]]
    shared: dict[str, Any] = field(default_factory=dict)
    parallel: int = 1


def load_spec(path: str | Path) -> SweepSpec:
    data = read_toml(path)
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise ScratchLMError(f"{path}: unknown sweep keys {sorted(unknown)} (expected {sorted(SPEC_KEYS)})")
    if "preset" not in data or "out_dir" not in data:
        raise ScratchLMError(f"{path}: a sweep needs 'preset' and 'out_dir'")
    grid, points = data.get("grid", {}), data.get("points", [])
    if bool(grid) == bool(points):
        raise ScratchLMError(f"{path}: give either a [grid] table or [[points]], not both or neither")
    if grid:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ScratchLMError(f"{path}: grid key {key!r} needs a non-empty list of values")
        keys = list(grid)
        points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    parallel = data.get("parallel", 1)
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise ScratchLMError(f"{path}: parallel must be an integer >= 1, got {parallel!r}")
    spec = SweepSpec(data["preset"], Path(data["out_dir"]), points, data.get("set", {}), parallel)
    _check_keys(spec)
    return spec


def _check_keys(spec: SweepSpec) -> None:
    """Fail before any run if a key is unknown or a value has the wrong type (with the nearest key)."""
    from scratchlm.config import load_config
    from scratchlm.train.config import TrainConfig

    for point in spec.points:
        load_config(TrainConfig, "train", spec.preset, overrides_of(spec, point, Path("x")))


def _fmt(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def point_name(point: dict[str, Any]) -> str:
    parts = [f"{k.split('.')[-1]}={_fmt(v)}" for k, v in point.items()]
    return "_".join(parts).replace("/", "-").replace(" ", "") or "default"


def overrides_of(spec: SweepSpec, point: dict[str, Any], run_dir: Path) -> list[str]:
    items = {**spec.shared, **point, "out_dir": str(run_dir)}
    return [f"{k}={json.dumps(v)}" for k, v in items.items()]  # JSON literals are valid TOML values


def run_point(spec: SweepSpec, point: dict[str, Any]) -> dict[str, Any]:
    run_dir = spec.out_dir / point_name(point)
    summary_path = run_dir / "summary.json"
    row: dict[str, Any] = {"name": run_dir.name, **point}
    if summary_path.is_file():  # finished earlier: resume the sweep, skip the run
        return {**row, **json.loads(summary_path.read_text()), "status": "done (cached)"}
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "scratchlm", "train", "--preset", spec.preset, "--quiet"]
    if (run_dir / "checkpoints").exists():
        cmd = [sys.executable, "-m", "scratchlm", "train", "--resume", str(run_dir), "--quiet"]
    else:
        cmd += ["--force"]
        for o in overrides_of(spec, point, run_dir):
            cmd += ["--set", o]
    t0 = time.time()
    with open(run_dir / "train.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not summary_path.is_file():
        lines = (run_dir / "train.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return {**row, "status": "failed", "error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return {**row, **json.loads(summary_path.read_text()), "status": "done", "wall_s": round(time.time() - t0, 1)}


def run_sweep(spec: SweepSpec, progress: bool = True) -> list[dict[str, Any]]:
    """Run every point (`parallel` at a time), write `results.{csv,md,json}` and `results.png`."""
    spec.out_dir.mkdir(parents=True, exist_ok=True)

    def one(i_point):
        i, point = i_point
        row = run_point(spec, point)
        if progress:
            loss = row.get("best_val_loss") or row.get("val_loss")
            shown = f"val {loss:.4f}" if isinstance(loss, float) else row.get("error", "")
            print(f"[{i + 1}/{len(spec.points)}] {row['name']}: {row['status']} {shown}", flush=True)
        return row

    with ThreadPoolExecutor(spec.parallel) as pool:
        rows = list(pool.map(one, enumerate(spec.points)))
    write_report(spec.out_dir, rows, list(spec.points[0]) if spec.points else [])
    return rows


COLUMNS = ["final_loss", "val_loss", "best_val_loss", "val_bpb", "tokens", "seconds", "params", "train_flops_per_token"]


def write_report(out_dir: Path, rows: list[dict[str, Any]], keys: list[str]) -> None:
    header = ["name", *keys, "status", *COLUMNS, "train_flops", "error"]
    for r in rows:
        if r.get("tokens") and r.get("train_flops_per_token"):
            r["train_flops"] = r["tokens"] * r["train_flops_per_token"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(out_dir / "results.csv", "w", encoding="utf-8") as f:
        f.write(buf.getvalue())
    write_json(out_dir / "results.json", rows)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cell(r.get(h)) for h in header) + " |" for r in rows]
    failed = [r for r in rows if r["status"] == "failed"]
    md.append(
        f"\n{len(rows) - len(failed)} of {len(rows)} runs finished" + (f"; {len(failed)} failed" if failed else "")
    )
    with atomic_write(out_dir / "results.md", "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    _plot(out_dir, rows, keys)


def _plot(out_dir: Path, rows: list[dict[str, Any]], keys: list[str]) -> None:
    ok = [r for r in rows if r["status"] != "failed" and isinstance(r.get("best_val_loss") or r.get("val_loss"), float)]
    if not ok or not keys:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, rest = keys[0], keys[1:]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[tuple, list] = {}
    for r in ok:
        groups.setdefault(tuple(r.get(k) for k in rest), []).append(r)
    for label, members in groups.items():
        members.sort(key=lambda r: r[x_key])
        ys = [r.get("best_val_loss") or r.get("val_loss") for r in members]
        name = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(rest, label)) or "val loss"
        ax.plot([r[x_key] for r in members], ys, "o-", label=name)
    if all(isinstance(r[x_key], (int, float)) and r[x_key] > 0 for r in ok):
        ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel("best validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "results.png", dpi=120)
    plt.close(fig)


def report(out_dir: Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        raise ScratchLMError(f"{out_dir} holds no sweep results (results.json)")
    rows = json.loads(path.read_text())
    keys = [k for k in rows[0] if k not in {"name", "status", "error", "run_dir", "stopped", *COLUMNS}] if rows else []
    keys = [k for k in keys if "." in k]
    write_report(Path(out_dir), rows, keys)
    return rows
