"""Report cards: results.json -> report.md (task, metric, value, standard error, n, few-shot, time) and
plots (per-subject MMLU bars), and `compare` for several result directories side by side."""

from __future__ import annotations

import json
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_write, read_json


def write_jsonl(path: Path, records: list[dict]) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def card(results: dict) -> str:
    lines = [
        f"# Evaluation: {results['model']}",
        "",
        f"{results['params'] / 1e6:.1f}M parameters; machine: {results['machine']}",
        "",
        "| task | metric | value | stderr | n | few-shot | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in results["tasks"].items():
        metric = m["metric"]
        lines.append(
            f"| {name} | {metric} | {fmt(m[metric])} | {fmt(m.get(metric + '_stderr'))} | {m['n']} "
            f"| {m['num_fewshot']} | {m['seconds']:.0f} |"
        )
    extra = []
    for name, m in results["tasks"].items():
        if "acc_macro" in m:
            extra.append(f"- {name}: acc_norm {fmt(m['acc_norm'])}, mean over groups (macro) {fmt(m['acc_macro'])}")
        if "exact_match_strict" in m:
            extra.append(f'- {name}: strict-match ("#### N") {fmt(m["exact_match_strict"])}')
        if "nats_per_token" in m:
            extra.append(
                f"- {name}: {m['tokens']} tokens, {m['bytes']} bytes, {fmt(m['nats_per_token'])} nats/token, "
                f"window {m['context']}, stride {m['stride'] or 'disjoint'}"
            )
    if extra:
        lines += ["", *extra]
    for name, m in results["tasks"].items():
        if m.get("groups"):
            key = group_metric(m)
            lines += [
                "",
                f"## {name} by group",
                "",
                f"![{name}]({name}_groups.png)",
                "",
                f"| group | {key} | n |",
                "|---|---|---|",
            ]
            lines += [f"| {g} | {fmt(v[key], 3)} | {v['n']} |" for g, v in m["groups"].items()]
    return "\n".join(lines) + "\n"


def group_metric(m: dict) -> str:
    """The task's metric where the groups carry it (acc_norm for cloze MMLU), else acc."""
    return m["metric"] if all(m["metric"] in v for v in m["groups"].values()) else "acc"


def plot_groups(path: Path, name: str, groups: dict, key: str = "acc") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(groups)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.18 * len(names))))
    ax.barh(names, [groups[g][key] for g in names])
    ax.axvline(0.25, color="grey", linestyle="--", linewidth=1, label="chance (4 choices)")
    ax.set_xlim(0, 1)
    ax.set_xlabel(key)
    ax.set_title(name)
    ax.tick_params(axis="y", labelsize=6)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def write_report(out: Path, results: dict) -> None:
    for name, m in results["tasks"].items():
        if m.get("groups"):
            plot_groups(out / f"{name}_groups.png", name, m["groups"], group_metric(m))
    with atomic_write(out / "report.md", "w", encoding="utf-8") as f:
        f.write(card(results))


def compare(dirs: list[str | Path]) -> str:
    """A Markdown table: one row per task, one column per result directory."""
    runs = []
    for d in dirs:
        p = Path(d) / "results.json"
        if not p.is_file():
            raise ScratchLMError(f"no results.json in {d}")
        runs.append(read_json(p, "evaluation results"))
    tasks = list(dict.fromkeys(t for r in runs for t in r["tasks"]))
    lines = ["| task | metric | " + " | ".join(r["model"] for r in runs) + " |", "|---" * (len(runs) + 2) + "|"]
    for t in tasks:
        metric = next(r["tasks"][t]["metric"] for r in runs if t in r["tasks"])
        cells = []
        for r in runs:
            m = r["tasks"].get(t)
            cells.append("-" if m is None else f"{fmt(m[metric])} ± {fmt(m.get(metric + '_stderr'))} (n={m['n']})")
        lines.append(f"| {t} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
