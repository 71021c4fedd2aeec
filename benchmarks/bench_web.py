"""Web-data pipeline: throughput per stage, end to end, against datatrove, and MinHash dedup against datasketch.

    python -m benchmarks.bench_web                       # full run (~5 min) -> benchmarks/results/web.{md,json}
    python -m benchmarks.bench_web --quick               # smoke test (~2 min) -> benchmarks/_work/results_quick/
    python -m benchmarks.bench_web --only pipelines minhash   # some sections -> benchmarks/_work/results_quick/

Data: the real Common Crawl WARC and WET in ../shared/data/web (one page each, so they are read
100 times), and a synthetic crawl built from owt_mini: each OpenWebText document wrapped in a news-site
page (cookie banner, header with search, navigation, byline, share links, a sidebar of links to other
stories, newsletter box, footer, script and style tags), 10% exact and 10% near-duplicate pages planted,
one page in 20 carrying an email and a phone number, written as Common Crawl writes WARCs (a gzip
member per record) in 4 shards. Sections:

- stages: one document at a time in this process, after a warm-up (model loading reported
  separately). MB/s counts what the stage reads: compressed file bytes for `read`, HTML bytes for
  `extract`, UTF-8 text bytes after that.
- e2e: `run_pipeline` with the local process pool (and Ray, when installed).
- pipelines: extract + language + Gopher + PII, scratchlm vs datatrove on the same WARCs, 2 workers
  each, kept sets compared (benchmarks/bench_web_pipelines.py; skipped without datatrove).
- minhash: scratchlm vs datasketch MinHash LSH with the same settings, scored against exact Jaccard
  over all pairs, over several hash seeds (benchmarks/bench_web_minhash.py).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import os
import platform
import random
import shutil
import statistics
import time
import zlib
from html import escape
from pathlib import Path

import numpy as np

from benchmarks.bench_web_minhash import edit
from benchmarks.common import (
    DATA,
    EOT,
    MB,
    OWT_MINI,
    RESULTS,
    WORK,
    _git_commit,
    check_data,
    cpu_model,
    markdown_table,
    rerun_command,
    save_report,
)

MODULE = "benchmarks.bench_web"
SHARED_WARC = DATA / "web" / "whirlwind.warc.gz"
SHARED_WET = DATA / "web" / "whirlwind.warc.wet.gz"
NAV = "Home\nNews\nPolitics\nBusiness\nSports\nWeather\nOpinion\nContact us"
HEADLINES = [
    "City council approves new budget after late-night session",
    "Local team clinches playoff spot with overtime win",
    "Storm expected to bring heavy rain this weekend",
    "Five things to know before the markets open",
    "School district announces new start times",
    "Review: the best budget phones of the year",
    "Police investigate break-in at downtown store",
    "Opinion: why the new bridge matters",
    "Hospital opens expanded emergency department",
    "Gas prices fall for third straight week",
]
FOOTER = "Copyright 2024 Example Media Group. All rights reserved.\nPrivacy policy | Terms of use"


# ---------------------------------------------------------------------------------------------- data
def owt_docs(limit: int) -> list[str]:
    docs = [d.strip() for d in OWT_MINI.read_text(encoding="utf-8").split(EOT) if d.strip()]
    return docs[:limit]


def warc_record(uri: str, html: bytes, rid: str) -> bytes:
    http = f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {len(html)}\r\n\r\n"
    block = http.encode() + html
    head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{rid}>\r\nWARC-Target-URI: {uri}\r\n"
        f"WARC-Date: 2024-05-18T01:58:10Z\r\nWARC-Identified-Payload-Type: text/html\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(block)}\r\n\r\n"
    )
    return head.encode() + block + b"\r\n\r\n"


def page(text: str) -> bytes:
    """`text` as an article page with the boilerplate of a news site: cookie banner, header with search,
    navigation, byline, share links, a sidebar of links to other stories, newsletter box, footer, scripts.
    The sidebar is drawn from HEADLINES seeded by the text, so identical texts give identical pages."""
    rng = random.Random(zlib.crc32(text.encode()))
    paras = "".join(f"<p>{escape(p)}</p>" for p in text.split("\n") if p.strip())
    title = escape(" ".join(text.split()[:8]))
    nav = "".join(f"<li><a href='/{x.lower().replace(' ', '-')}'>{x}</a></li>" for x in NAV.split("\n"))
    side = "".join(f"<li><a href='/story/{rng.randrange(10**6)}'>{h}</a></li>" for h in rng.sample(HEADLINES, 5))
    foot = "<br>".join(FOOTER.split("\n"))
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title} | Example Media</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><link rel='stylesheet' href='/s.css'>"
        f"<script>window.dataLayer=window.dataLayer||[];function gtag(){{dataLayer.push(arguments);}}"
        f"gtag('js',new Date());gtag('config','G-XXXX');</script>"
        f"<style>body{{font-family:sans-serif}}.sidebar{{float:right;width:30%}}#cookie{{position:fixed}}</style>"
        f"</head><body><div id='cookie' class='cookie-banner'>We use cookies to improve your experience. By "
        f"continuing to browse the site you agree to our use of cookies. <a href='/privacy'>Learn more</a> "
        f"<button>Accept</button></div><header class='site-header'><a class='logo' href='/'>Example Media</a>"
        f"<form action='/search'><input name='q' placeholder='Search'><button>Go</button></form>"
        f"<a href='/login'>Sign in</a> <a href='/subscribe'>Subscribe</a></header>"
        f"<nav><ul>{nav}</ul></nav><main><article><h1>{title}</h1>"
        f"<p class='byline'>By Staff Writer | May 18, 2024 | 4 min read</p>{paras}"
        f"<div class='share'>Share this article: <a href='#'>Facebook</a> <a href='#'>Twitter</a> "
        f"<a href='#'>Email</a></div></article><aside class='sidebar'><h3>Most popular</h3><ul>{side}</ul>"
        f"<h3>Newsletter</h3><p>Sign up for our daily newsletter.</p></aside></main>"
        f"<footer>{foot}</footer><script src='/app.js'></script>"
        f"<script>document.getElementById('cookie').onclick=function(){{this.remove()}};</script></body></html>"
    ).encode()


def synthetic_crawl(n_docs: int, shards: int) -> tuple[list[Path], int]:
    """n_docs owt pages + 10% exact + 10% near copies + PII, as `shards` gzip-per-record WARC files."""
    rng = random.Random(0)
    docs = owt_docs(n_docs)
    pages = list(docs)
    pages += [docs[rng.randrange(len(docs))] for _ in range(len(docs) // 10)]
    pages += [edit(docs[rng.randrange(len(docs))], 0.02, rng) for _ in range(len(docs) // 10)]
    rng.shuffle(pages)
    for i in range(0, len(pages), 20):
        pages[i] += f"\nContact the editor at editor{i}@example.com or 555-201-{i % 10000:04d}."
    out = WORK / "web" / f"crawl_{n_docs}"
    if out.is_dir():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    paths = []
    per = -(-len(pages) // shards)
    for s in range(shards):
        path = out / f"crawl-{s:02d}.warc.gz"
        with open(path, "wb") as f:
            for i in range(s * per, min((s + 1) * per, len(pages))):
                f.write(gzip.compress(warc_record(f"http://example.com/{i}", page(pages[i]), f"doc-{i}")))
        paths.append(path)
    return paths, len(pages)


# ---------------------------------------------------------------------------------------------- stage throughput
def timed(fn, items, repeats: int) -> float:
    """Median seconds of `fn` over all items (after one warm-up call)."""
    fn(items[0])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def stage_rows(paths: list[Path], repeats: int, quick: bool) -> tuple[list[dict], dict]:
    from scratchlm.data import (
        c4_line_filter,
        classify_nsfw,
        classify_toxic_speech,
        extract_text,
        gopher_quality_failures,
        identify_language,
        mask_emails,
        mask_ips,
        mask_phone_numbers,
        read_documents,
        repetition_failures,
    )
    from scratchlm.data.harmful import toxic_probabilities
    from scratchlm.data.hashing import hash128
    from scratchlm.data.minhash import MinHasher
    from scratchlm.data.quality_model import QualityTrainConfig, train_quality_model
    from scratchlm.data.stats import StageStats

    rows, loads = [], {}

    def row(name: str, data: str, fn, items, nbytes: int, note: str = "", docs: int | None = None) -> None:
        s = timed(fn, items, repeats)
        n = docs or len(items)
        rows.append(
            {
                "stage": name,
                "data": data,
                "docs": n,
                "mb_in": nbytes / MB,
                "docs_per_s": n / s,
                "mb_per_s": nbytes / MB / s,
                "note": note,
            }
        )
        print(f"  {name:<28} {n / s:>10,.0f} docs/s {nbytes / MB / s:>8.2f} MB/s  ({data})")

    # the real Common Crawl files: one record each, read 100 times
    for label, path in (("CC WARC (1 page)", SHARED_WARC), ("CC WET (1 page)", SHARED_WET)):
        if path.is_file():
            items = [path] * (20 if quick else 100)
            row(
                "read",
                label,
                lambda p: list(read_documents(p, StageStats("r"))),
                items,
                path.stat().st_size * len(items),
            )
    if SHARED_WARC.is_file():
        (doc,) = read_documents(SHARED_WARC, StageStats("r"))
        items = [doc.html] * (20 if quick else 100)
        row("extract", "CC WARC (1 page)", extract_text, items, len(doc.html) * len(items))

    docs = [d for p in paths for d in read_documents(p, StageStats("r"))]
    file_bytes = sum(p.stat().st_size for p in paths)
    read_all = lambda p: list(read_documents(p, StageStats("r")))  # noqa: E731
    row("read (gzip + WARC parse)", "synthetic crawl", read_all, paths, file_bytes, "MB: gzip files", docs=len(docs))
    htmls = [d.html for d in docs]
    html_bytes = sum(map(len, htmls))
    row("extract", "synthetic crawl", extract_text, htmls, html_bytes)
    row("extract (main_content)", "synthetic crawl", lambda h: extract_text(h, main_content=True), htmls, html_bytes)
    texts = [extract_text(h) for h in htmls]
    tb = sum(len(t.encode()) for t in texts)

    t0 = time.perf_counter()
    identify_language("warm up")
    loads["language (lid.176.ftz)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    classify_nsfw("warm up")
    loads["nsfw (LDNOOBW lexicon)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    classify_toxic_speech("warm up")
    loads["toxic (alt-profanity-check)"] = time.perf_counter() - t0

    row("language", "synthetic crawl", identify_language, texts, tb)
    row(
        "pii (emails, phones, IPs)",
        "synthetic crawl",
        lambda t: (mask_emails(t), mask_phone_numbers(t), mask_ips(t)),
        texts,
        tb,
    )
    row("nsfw (lexicon)", "synthetic crawl", classify_nsfw, texts, tb)
    row("toxic (profanity-check)", "synthetic crawl", classify_toxic_speech, texts, tb)
    batches = [texts[i : i + 64] for i in range(0, len(texts), 64)]
    s = timed(toxic_probabilities, batches, repeats)
    rows.append(
        {
            "stage": "toxic (batches of 64)",
            "data": "synthetic crawl",
            "docs": len(texts),
            "mb_in": tb / MB,
            "docs_per_s": len(texts) / s,
            "mb_per_s": tb / MB / s,
            "note": "what the pipeline stage does",
        }
    )
    row("gopher rules", "synthetic crawl", gopher_quality_failures, texts, tb)
    row("c4 line filter", "synthetic crawl", c4_line_filter, texts, tb)
    row("repetition rules", "synthetic crawl", repetition_failures, texts, tb)

    qdir = WORK / "web" / "quality_model"
    rng = random.Random(1)
    neg = ["\n".join(rng.sample(t.split(), k=min(60, len(t.split())))) for t in texts[: len(texts) // 2]]
    (WORK / "web").mkdir(parents=True, exist_ok=True)
    pos_file, neg_file = WORK / "web" / "pos.jsonl", WORK / "web" / "neg.jsonl"
    pos_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[: len(texts) // 2]))
    neg_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in neg))
    t0 = time.perf_counter()
    model = train_quality_model(
        [pos_file], [neg_file], QualityTrainConfig(epochs=1), out=qdir, overwrite=True, log=lambda s: None
    )
    loads["quality model training (timing only: owt vs shuffled words)"] = time.perf_counter() - t0
    row("quality classifier", "synthetic crawl", model.predict, texts, tb, "hashed 1-2-grams, 2^18 x 16")

    mh = MinHasher(128, 5)
    row("minhash signature (128)", "synthetic crawl", mh.signature, texts, tb, "normalise + 5-grams + 128 hashes")
    row("exact hash (BLAKE2b-128)", "synthetic crawl", hash128, texts, tb)
    return rows, loads


# ---------------------------------------------------------------------------------------------- end to end
PIPELINE_STAGES = [
    {"stage": "extract"},
    {"stage": "language", "languages": ["en"], "min_score": 0.5},
    {"stage": "pii"},
    {"stage": "nsfw"},
    {"stage": "toxic"},
    {"stage": "gopher"},
    {"stage": "repetition"},
    {"stage": "exact_dedup"},
    {"stage": "minhash_dedup"},
    {"stage": "line_dedup"},  # after document dedup: it removes every copy of a repeated line
]


def end_to_end(paths: list[Path], executor: str, workers: int) -> dict:
    from scratchlm.config import from_dict
    from scratchlm.data.pipeline import PipelineConfig
    from scratchlm.data.runner import run_pipeline

    out = WORK / "web" / f"run_{executor}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = from_dict(
        PipelineConfig,
        {
            "input": {"paths": [str(p) for p in paths]},
            "output": {"dir": str(out)},
            "executor": executor,
            "workers": workers,
            "stages": PIPELINE_STAGES,
        },
    )
    t0 = time.perf_counter()
    report = run_pipeline(cfg, progress=False, log=lambda s: None)
    wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = run_pipeline(cfg, progress=False, log=lambda s: None)
    resumed = time.perf_counter() - t0
    assert all(p["processed"] == 0 for p in again["phases"])
    read = report["stages"][0]
    file_bytes = sum(p.stat().st_size for p in paths)
    return {
        "executor": executor,
        "workers": report["workers"],
        "docs_in": read["docs_out"],
        "docs_out": report["stages"][-1]["docs_out"],
        "file_mb": file_bytes / MB,
        "wall_s": wall,
        "docs_per_s": read["docs_out"] / wall,
        "mb_per_s": file_bytes / MB / wall,
        "resume_s": resumed,
        "stages": [{k: s[k] for k in ("name", "docs_in", "docs_out", "seconds", "drops")} for s in report["stages"]],
        "global": report["global_stages"],
    }


# ---------------------------------------------------------------------------------------------- report
def info() -> dict:
    import psutil

    def version(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_start": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "datasketch": version("datasketch"),
        "ray": version("ray"),
        "datatrove": version("datatrove"),
        "trafilatura": version("trafilatura"),
        "spacy": version("spacy"),
        "git_commit": _git_commit(),
    }


def stages_markdown(res: dict) -> list[str]:
    rows = [
        [r["stage"], r["data"], r["docs"], r["mb_in"], r["docs_per_s"], r["mb_per_s"], r["note"]] for r in res["stages"]
    ]
    return [
        "## Per stage (one process, one document at a time, median of repeats)",
        "",
        markdown_table(["stage", "data", "docs", "MB in", "docs/s", "MB/s", "note"], rows),
        "",
        "Model load / warm-up (once per worker process): "
        + "; ".join(f"{k} {v:.2f} s" for k, v in res["loads"].items())
        + ".",
    ]


def e2e_markdown(res: dict) -> list[str]:
    keys = ["executor", "workers", "docs_in", "docs_out", "file_mb", "wall_s", "docs_per_s", "mb_per_s", "resume_s"]
    header = [
        "executor",
        "workers",
        "docs in",
        "docs out",
        "MB (gz)",
        "wall s",
        "docs/s",
        "MB/s",
        "rerun (all resumed) s",
    ]
    lines = [
        "## End to end (`run_pipeline`, synthetic crawl, all stages of the web-en example but quality)",
        "",
        markdown_table(header, [[r[k] for k in keys] for r in res["end_to_end"]]),
    ]
    first = res["end_to_end"][0]
    drops = "; ".join(
        f"{s['name']}: " + ", ".join(f"{k} {v}" for k, v in s["drops"].items()) for s in first["stages"] if s["drops"]
    )
    return [*lines, "", f"Drops ({first['executor']} run): {drops}."]


def markdown(res: dict, command: str) -> str:
    from benchmarks.bench_web_minhash import markdown as minhash_markdown
    from benchmarks.bench_web_pipelines import markdown as pipelines_markdown

    m = res["machine"]
    lines = [
        "# Web-data pipeline: throughput per stage, end to end, vs datatrove, and MinHash vs datasketch",
        "",
        f"- date {m['date']}; git {m['git_commit']}; {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GiB;"
        f" load average at start {m['load_start'][0]:.2f} / {m['load_start'][1]:.2f} / {m['load_start'][2]:.2f}"
        " (1 / 5 / 15 min; shared machine: other jobs were running, so timings carry their noise)",
        f"- python {m['python']}, numpy {m['numpy']}, datasketch {m['datasketch']}, ray {m['ray']},"
        f" datatrove {m['datatrove']}, trafilatura {m['trafilatura']}, spacy {m['spacy']}",
        f"- rerun: `{command}`",
    ]
    sections = {"stages": stages_markdown, "end_to_end": e2e_markdown}
    for key, fn in sections.items():
        if res.get(key):
            lines += ["", *fn(res)]
    if res.get("pipelines"):
        lines += ["", *pipelines_markdown(res["pipelines"])]
    if res.get("minhash"):
        lines += ["", *minhash_markdown(res["minhash"])]
    load = res["load_end"]
    lines += [
        "",
        f"Total benchmark time {res['seconds']:.0f} s; load average at end {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f}.",
        "",
    ]
    return "\n".join(lines)


SECTIONS = ("stages", "e2e", "pipelines", "minhash")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, results to benchmarks/_work/results_quick/")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run these sections (results to _work/ unless --out)")
    ap.add_argument("--docs", type=int, default=1000, help="owt documents in the synthetic crawl")
    ap.add_argument("--dedup-docs", type=int, default=1000, help="owt documents in the MinHash comparison")
    ap.add_argument("--dedup-copies", type=int, default=600, help="planted near-copies in the MinHash comparison")
    ap.add_argument("--seeds", type=int, default=5, help="hash seeds per MinHash implementation")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per stage row")
    ap.add_argument("--pipeline-repeats", type=int, default=1, help="runs per pipeline in the datatrove comparison")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    check_data()
    if args.quick:
        args.docs, args.dedup_docs, args.dedup_copies, args.seeds, args.repeats = 120, 200, 120, 2, 1
        args.pipeline_repeats = 1
    only = set(args.only or SECTIONS)
    out = args.out or (WORK / "results_quick" if args.quick or args.only else RESULTS)
    t0 = time.perf_counter()
    res: dict = {"machine": info()}
    paths, n_pages = synthetic_crawl(args.docs, shards=4)
    print(f"synthetic crawl: {n_pages} pages in {len(paths)} shards")
    if "stages" in only:
        res["stages"], res["loads"] = stage_rows(paths, args.repeats, args.quick)
    if "e2e" in only:
        res["end_to_end"] = [end_to_end(paths, "local", 2)]
        try:
            import ray  # noqa: F401

            res["end_to_end"].append(end_to_end(paths, "ray", 2))
        except ImportError:
            print("ray not installed: no Ray row")
        for r in res["end_to_end"]:
            print(f"  end to end ({r['executor']}): {r['docs_per_s']:.1f} docs/s, {r['wall_s']:.1f} s")
    if "pipelines" in only:
        try:
            import datatrove  # noqa: F401
        except ImportError:
            print("datatrove not installed (pip install -c constraints.txt -e '.[bench]'): no comparison")
        else:
            from benchmarks.bench_web_pipelines import compare

            res["pipelines"] = compare(paths, args.pipeline_repeats)
    if "minhash" in only:
        from benchmarks.bench_web_minhash import run as minhash_run

        res["minhash"] = minhash_run(owt_docs(args.dedup_docs), args.dedup_copies, args.seeds)
    res["seconds"] = time.perf_counter() - t0
    res["load_end"] = os.getloadavg()
    save_report(out, "web", markdown(res, rerun_command(MODULE)), res)


if __name__ == "__main__":
    main()
