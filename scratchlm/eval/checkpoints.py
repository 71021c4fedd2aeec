"""A training run's saved checkpoints scored on tasks, next to its validation curves.

    scratchlm eval run --model runs/quickstart --checkpoints --tasks bpb:tinystories_val --out evals/qs

writes, besides one ordinary result directory per checkpoint (`OUT/steps/step_0000200/results.json`,
`report.md`, resumable like any `eval run`):

    OUT/checkpoints.json   per step: each task's headline metric, standard error and n; the run's
                           validation records (metrics.jsonl rows of kind "eval") and train losses
    OUT/checkpoints.md     the same as a table, with the plot
    OUT/checkpoints.png    left: train loss and validation loss / bits per byte against the step;
                           right: each task's score at each checkpoint (error bars: one stderr)

Only the checkpoints the run kept are there to score (`keep_last` and the best one); the validation
curve has a point at every evaluation of the run.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_write, write_json

log = logging.getLogger(__name__)


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(validation rows, train rows) of a run's metrics.jsonl; a torn or foreign line is skipped."""
    path = run_dir / "metrics.jsonl"
    valid, train = [], []
    if not path.is_file():
        return valid, train
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or "step" not in row:
            continue
        if row.get("kind") == "eval" and "val_loss" in row:
            valid.append({k: row[k] for k in ("step", "tokens", "val_loss", "val_bpb") if k in row})
        elif row.get("kind") == "train" and "loss" in row:
            train.append({"step": row["step"], "loss": row["loss"]})
    return valid, train


def evaluate_checkpoints(run_dir: str | Path, tasks: str, out: str | Path, settings=None) -> dict:
    """Score every kept checkpoint of `run_dir` on `tasks` (see `run.evaluate`); write the curves."""
    from scratchlm.eval import run
    from scratchlm.tokenizer.chat import ChatTokenizer
    from scratchlm.train.checkpoint import list_checkpoints, load_weights
    from scratchlm.train.run import load_run

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.toml").is_file():
        raise ScratchLMError(f"--checkpoints needs a training run directory (config.toml); {run_dir} is not one")
    steps = list_checkpoints(run_dir)
    if not steps:
        raise ScratchLMError(f"{run_dir} has no saved checkpoints to score")
    run.parse_tasks(tasks)  # a bad task list fails before any model loads
    model, tok, _ = load_run(run_dir, which="latest")
    chat = ChatTokenizer.plain(tok)
    points = []
    for step_dir in steps:
        load_weights(step_dir, model)
        step = int(re.fullmatch(r"step_(\d+)", step_dir.name).group(1))
        log.info("checkpoint %s", step_dir.name)
        res = run.evaluate(f"{run_dir}@{step_dir.name}", tasks, out / "steps" / step_dir.name, settings, (model, chat))
        scores = {}
        for name, m in res["tasks"].items():
            metric = m["metric"]
            scores[name] = {"metric": metric, "value": m[metric], "stderr": m.get(f"{metric}_stderr"), "n": m["n"]}
        points.append({"step": step, "dir": step_dir.name, "tasks": scores})
    valid, train = read_metrics(run_dir)
    summary = {"run": str(run_dir), "checkpoints": points, "validation": valid, "train": train}
    write_json(out / "checkpoints.json", summary)
    plot(out / "checkpoints.png", summary)
    with atomic_write(out / "checkpoints.md", "w", encoding="utf-8") as f:
        f.write(table(summary))
    return summary


def _fmt(x) -> str:
    return "-" if x is None or x != x else f"{x:.4f}"


def table(summary: dict) -> str:
    names = list(dict.fromkeys(t for p in summary["checkpoints"] for t in p["tasks"]))
    val = {r["step"]: r for r in summary["validation"]}
    head = ["step", "val_loss", "val_bpb"] + [f"{t} ({summary['checkpoints'][0]['tasks'][t]['metric']})" for t in names]
    lines = [f"# Checkpoints of {summary['run']}", "", "![curves](checkpoints.png)", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in summary["checkpoints"]:
        v = val.get(p["step"], {})
        cells = [str(p["step"]), _fmt(v.get("val_loss")), _fmt(v.get("val_bpb"))]
        for t in names:
            s = p["tasks"].get(t)
            cells.append("-" if s is None else f"{_fmt(s['value'])} ± {_fmt(s['stderr'])} (n={s['n']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    if summary["train"]:
        few = len(summary["train"]) < 20  # a short run: show its few points, not an invisible line
        left.plot([r["step"] for r in summary["train"]], [r["loss"] for r in summary["train"]], "." if few else "-",
                  alpha=0.5, label="train loss")  # fmt: skip
    valid = summary["validation"]
    if valid:
        left.plot([r["step"] for r in valid], [r["val_loss"] for r in valid], "o-", label="validation loss")
        if all("val_bpb" in r for r in valid):
            left.plot([r["step"] for r in valid], [r["val_bpb"] for r in valid], "s--", label="validation bits/byte")
    left.set_xlabel("step")
    left.set_title("training curves")
    left.legend(loc="upper right", fontsize=8)
    names = list(dict.fromkeys(t for p in summary["checkpoints"] for t in p["tasks"]))
    for t in names:
        pts = [(p["step"], p["tasks"][t]) for p in summary["checkpoints"] if t in p["tasks"]]
        err = [s["stderr"] if s["stderr"] is not None and s["stderr"] == s["stderr"] else 0.0 for _, s in pts]
        right.errorbar([st for st, _ in pts], [s["value"] for _, s in pts], yerr=err, marker="o", capsize=3,
                       label=f"{t} ({pts[0][1]['metric']})")  # fmt: skip
    right.set_xlabel("step")
    right.set_title("task scores at the saved checkpoints")
    right.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
