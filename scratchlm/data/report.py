"""The run report as markdown: one row per stage, then why documents were dropped, with examples."""

from __future__ import annotations

from typing import Any

SNIPPET = 160  # characters of an example shown in the markdown (the JSON keeps more)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


def _rate(docs: int, seconds: float) -> str:
    return f"{docs / seconds:,.0f}" if seconds > 0 else "-"


def render_report(report: dict[str, Any]) -> str:
    lines = [
        "# Pipeline report",
        "",
        f"{report['inputs']} input shards, executor `{report['executor']}` ({report['workers']} workers), "
        f"{report['seconds']:.1f} s. Output: `{report['output']}`.",
        "",
        "| stage | docs in | docs out | kept | MB in | MB out | stage docs/s | top drop reasons |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in report["stages"]:
        kept = f"{100 * s['docs_out'] / s['docs_in']:.1f}%" if s["docs_in"] else "-"
        reasons = ", ".join(f"{r} {n:,}" for r, n in list(s["drops"].items())[:3])
        lines.append(
            f"| {s['name']} | {s['docs_in']:,} | {s['docs_out']:,} | {kept} | {_mb(s['bytes_in'])} | "
            f"{_mb(s['bytes_out'])} | {_rate(s['docs_in'], s['seconds'])} | {reasons} |"
        )
    counters = [(s["name"], k, v) for s in report["stages"] for k, v in s["counters"].items()]
    if counters:
        lines += ["", "Other counts: " + "; ".join(f"{st}.{k} {v:,}" for st, k, v in counters) + "."]
    for g in report.get("global_stages", []):
        info = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in g.items() if k != "stage")
        lines += ["", f"Global stage `{g['stage']}`: {info}."]
    lines += ["", "| phase | stages | shards | processed | skipped (resumed) |", "|---|---|---:|---:|---:|"]
    for p in report["phases"]:
        lines.append(
            f"| {p['phase']} | {', '.join(p['stages']) or '-'} | {p['shards']} | {p['processed']} | {p['skipped']} |"
        )
    if "tokens" in report:
        t = report["tokens"]
        lines += [
            "",
            f"Tokens: {t['tokens']:,} in {len(t['files'])} shard files"
            + (f", merged into `{t['merged']}`." if "merged" in t else "."),
        ]
    lines += ["", "## Why documents were dropped", ""]
    any_drop = False
    for s in report["stages"]:
        for reason, n in s["drops"].items():
            any_drop = True
            lines.append(f"### {s['name']}: {reason} ({n:,})")
            lines.append("")
            for ex in s["examples"].get(reason, []):
                lines.append("- " + _example(ex))
            lines.append("")
        for event, items in s["examples"].items():
            if event not in s["drops"]:  # counted events with examples (corrupt gzip members)
                lines += [f"### {s['name']}: {event} ({s['counters'].get(event, len(items)):,}, not a document)", ""]
                lines += ["- " + _example(ex) for ex in items] + [""]
    if not any_drop:
        lines.append("No document was dropped.")
    return "\n".join(lines).rstrip() + "\n"


def _example(ex: dict[str, Any]) -> str:
    parts = []
    if ex.get("id"):
        parts.append(f"`{ex['id']}`")
    if ex.get("url"):
        parts.append(ex["url"])
    if ex.get("where"):
        parts.append(ex["where"])
    if ex.get("detail"):
        parts.append(f"({ex['detail']})")
    text = " ".join((ex.get("text") or "").split())[:SNIPPET]
    if text:
        parts.append(f"\u201c{text}\u201d")
    return " ".join(parts) or "(no detail)"
