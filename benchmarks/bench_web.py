"""Web-data pipeline throughput per stage, end to end, and MinHash dedup against datasketch.

    python -m benchmarks.bench_web            # full run -> benchmarks/results/web.{md,json}
    python -m benchmarks.bench_web --quick    # smoke test (~1 min) -> benchmarks/_work/results_quick/

Data: the real Common Crawl WARC and WET in ../shared/data/web (one page each, so they are read
100 times), and a synthetic crawl built from owt_mini: each OpenWebText document wrapped in an HTML
page with shared navigation/footer boilerplate, 10% exact and 10% near-duplicate pages planted, one
page in 20 carrying an email and a phone number, written as Common Crawl writes WARCs (a gzip member
per record) in 4 shards. Stage rows run in this process, one document at a time, after a warm-up
(model loading is reported separately); the end-to-end rows run `run_pipeline` with the local
process pool (and Ray, when installed). MB/s counts what the stage reads: compressed file bytes for
`read`, HTML bytes for `extract`, UTF-8 text bytes after that.

MinHash vs datasketch: the same documents (owt_mini + planted near-copies at known edit rates), the
same shingles (word 5-grams of the same normalised text), the same bands (16 x 8 of 128 hashes) and
the same verification (true Jaccard >= 0.8, connected components). Reported: time to signatures and
to candidate pairs, the candidate pairs each finds and their overlap, recall of the planted pairs,
and whether the final clusters agree.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    DATA,
    EOT,
    MB,
    OWT_MINI,
    RESULTS,
    WORK,
    _cpu_model,
    _git_commit,
    check_data,
    markdown_table,
    rerun_command,
    save_report,
)

MODULE = "benchmarks.bench_web"
SHARED_WARC = DATA / "web" / "whirlwind.warc.gz"
SHARED_WET = DATA / "web" / "whirlwind.warc.wet.gz"
NAV = "Home\nNews\nSports\nWeather\nContact us"
FOOTER = "Copyright 2024 Example Media Group. All rights reserved.\nPrivacy policy | Terms of use"


# ---------------------------------------------------------------------------------------------- data
def owt_docs(limit: int) -> list[str]:
    docs = [d.strip() for d in OWT_MINI.read_text(encoding="utf-8").split(EOT) if d.strip()]
    return docs[:limit]


def edit(text: str, rate: float, rng: random.Random) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), k=int(rate * len(words))):
        words[i] = f"zz{rng.randrange(10**6)}"
    return " ".join(words)


def warc_record(uri: str, html: bytes, rid: str) -> bytes:
    http = f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {len(html)}\r\n\r\n"
    block = http.encode() + html
    head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{rid}>\r\nWARC-Target-URI: {uri}\r\n"
        f"WARC-Date: 2024-05-18T01:58:10Z\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(block)}\r\n\r\n"
    )
    return head.encode() + block + b"\r\n\r\n"


def page(text: str) -> bytes:
    paras = "".join(f"<p>{p}</p>" for p in text.split("\n") if p.strip())
    nav = "".join(f"<li><a href='/{x}'>{x}</a></li>" for x in NAV.split("\n"))
    foot = "<br>".join(FOOTER.split("\n"))
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Article</title>"
        f"<script>window.dataLayer=[];</script><style>p{{margin:0}}</style></head><body>"
        f"<nav><ul>{nav}</ul></nav><main><article><h1>Article</h1>{paras}</article></main>"
        f"<footer>{foot}</footer></body></html>"
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


# ---------------------------------------------------------------------------------------------- MinHash vs datasketch
def dedup_corpus(n_docs: int) -> tuple[list[str], list[tuple[int, int, float]]]:
    """owt docs + near copies at edit rates 1..30% (planted pairs: (source, copy, edit rate))."""
    rng = random.Random(2)
    docs = owt_docs(n_docs)
    planted = []
    rates = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3]
    for k in range(n_docs // 4):
        src = rng.randrange(n_docs)
        rate = rates[k % len(rates)]
        docs.append(edit(docs[src], rate, rng))
        planted.append((src, len(docs) - 1, rate))
    return docs, planted


def minhash_vs_datasketch(n_docs: int, num_hashes=128, bands=16, ngrams=5, threshold=0.8) -> dict:
    from datasketch import MinHash, MinHashLSH

    from scratchlm.data.minhash import MinHasher, UnionFind, band_keys, candidate_pairs, jaccard, word_ngrams

    docs, planted = dedup_corpus(n_docs)
    rows = num_hashes // bands

    # scratchlm: signature (normalise, shingle, hash) + band keys + buckets
    t0 = time.perf_counter()
    mh = MinHasher(num_hashes, ngrams, seed=0)
    sigs = np.stack([mh.signature(d) for d in docs])
    t_sig = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = candidate_pairs(band_keys(sigs, bands))
    t_lsh = time.perf_counter() - t0

    # datasketch: same shingles (strings of the same normalised 5-grams), MinHashLSH with the same (b, r)
    t0 = time.perf_counter()
    shingles = [word_ngrams(d, ngrams) for d in docs]
    ds = []
    for s in shingles:
        m = MinHash(num_perm=num_hashes, seed=1)
        m.update_batch([g.encode() for g in s])
        ds.append(m)
    d_sig = time.perf_counter() - t0
    t0 = time.perf_counter()
    lsh = MinHashLSH(num_perm=num_hashes, params=(bands, rows))
    for i, m in enumerate(ds):
        lsh.insert(i, m)
    theirs = set()
    for i, m in enumerate(ds):
        theirs.update((min(i, j), max(i, j)) for j in lsh.query(m) if j != i)
    d_lsh = time.perf_counter() - t0

    sets = {}

    def grams(i):
        if i not in sets:
            sets[i] = word_ngrams(docs[i], ngrams)
        return sets[i]

    def clusters(pairs):
        uf = UnionFind(len(docs))
        similar = 0
        for a, b in sorted(pairs):
            if jaccard(grams(a), grams(b)) >= threshold:
                similar += 1
                uf.union(a, b)
        groups = {}
        for i in range(len(docs)):
            groups.setdefault(uf.find(i), []).append(i)
        return {tuple(g) for g in groups.values() if len(g) > 1}, similar

    ours_clusters, ours_sim = clusters(ours)
    theirs_clusters, theirs_sim = clusters(theirs)
    truth = [(a, b, r, jaccard(grams(a), grams(b))) for a, b, r in planted]
    positives = [(a, b) for a, b, _, j in truth if j >= threshold]
    by_rate = {}
    for a, b, r, j in truth:
        e = by_rate.setdefault(r, {"pairs": 0, "mean_jaccard": 0.0, "ours": 0, "datasketch": 0})
        e["pairs"] += 1
        e["mean_jaccard"] += j
        e["ours"] += (a, b) in ours
        e["datasketch"] += (a, b) in theirs
    for e in by_rate.values():
        e["mean_jaccard"] /= e["pairs"]
    return {
        "documents": len(docs),
        "settings": {"num_hashes": num_hashes, "bands": bands, "rows": rows, "ngrams": ngrams, "threshold": threshold},
        "ours": {
            "signature_s": t_sig,
            "lsh_s": t_lsh,
            "candidate_pairs": len(ours),
            "similar_pairs": ours_sim,
            "clusters": len(ours_clusters),
        },
        "datasketch": {
            "signature_s": d_sig,
            "lsh_s": d_lsh,
            "candidate_pairs": len(theirs),
            "similar_pairs": theirs_sim,
            "clusters": len(theirs_clusters),
        },
        "candidate_overlap": len(ours & theirs) / max(len(ours | theirs), 1),
        "candidates_only_ours": len(ours - theirs),
        "candidates_only_datasketch": len(theirs - ours),
        "identical_clusters": len(ours_clusters & theirs_clusters),
        "planted_pairs_above_threshold": len(positives),
        "recall_ours": sum(p in ours for p in positives) / max(len(positives), 1),
        "recall_datasketch": sum(p in theirs for p in positives) / max(len(positives), 1),
        "by_edit_rate": {str(k): v for k, v in sorted(by_rate.items())},
    }


# ---------------------------------------------------------------------------------------------- report
def info() -> dict:
    import psutil

    def version(mod):
        try:
            return __import__(mod).__version__
        except (ImportError, AttributeError):
            return "?"

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_start": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "datasketch": version("datasketch"),
        "ray": version("ray"),
        "git_commit": _git_commit(),
    }


def markdown(res: dict, command: str) -> str:
    m = res["machine"]
    lines = [
        "# Web-data pipeline: throughput per stage, end to end, and MinHash vs datasketch",
        "",
        f"- date {m['date']}; git {m['git_commit']}; {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GiB;"
        f" load average at start {m['load_start'][0]:.2f} (shared machine: other jobs were running)",
        f"- python {m['python']}, numpy {m['numpy']}, datasketch {m['datasketch']}, ray {m['ray']}",
        f"- rerun: `{command}`",
        "",
        "## Per stage (one process, one document at a time, median of repeats)",
        "",
    ]
    rows = [
        [r["stage"], r["data"], r["docs"], r["mb_in"], r["docs_per_s"], r["mb_per_s"], r["note"]] for r in res["stages"]
    ]
    lines.append(markdown_table(["stage", "data", "docs", "MB in", "docs/s", "MB/s", "note"], rows))
    lines += [
        "",
        "Model load / warm-up (once per worker process): "
        + "; ".join(f"{k} {v:.2f} s" for k, v in res["loads"].items())
        + ".",
    ]
    lines += ["", "## End to end (`run_pipeline`, synthetic crawl, all stages of the web-en example but quality)", ""]
    e2e = []
    for r in res["end_to_end"]:
        e2e.append(
            [
                r["executor"],
                r["workers"],
                r["docs_in"],
                r["docs_out"],
                r["file_mb"],
                r["wall_s"],
                r["docs_per_s"],
                r["mb_per_s"],
                r["resume_s"],
            ]
        )
    lines.append(
        markdown_table(
            [
                "executor",
                "workers",
                "docs in",
                "docs out",
                "MB (gz)",
                "wall s",
                "docs/s",
                "MB/s",
                "rerun (all resumed) s",
            ],
            e2e,
        )
    )
    if res["end_to_end"]:
        first = res["end_to_end"][0]
        drops = "; ".join(
            f"{s['name']}: " + ", ".join(f"{k} {v}" for k, v in s["drops"].items())
            for s in first["stages"]
            if s["drops"]
        )
        lines += ["", f"Drops ({first['executor']} run): {drops}."]
    mh = res["minhash"]
    s = mh["settings"]
    lines += [
        "",
        f"## MinHash + LSH: scratchlm vs datasketch ({mh['documents']:,} documents, {s['num_hashes']} hashes, "
        f"{s['bands']} bands x {s['rows']} rows, word {s['ngrams']}-grams, verified at Jaccard >= {s['threshold']})",
        "",
    ]
    table = [
        [name, v["signature_s"], v["lsh_s"], v["candidate_pairs"], v["similar_pairs"], v["clusters"]]
        for name, v in (("scratchlm (numpy)", mh["ours"]), ("datasketch MinHash + MinHashLSH", mh["datasketch"]))
    ]
    lines.append(
        markdown_table(
            ["implementation", "signatures s", "LSH s", "candidate pairs", "verified similar", "clusters"], table
        )
    )
    lines += [
        "",
        f"Candidate pairs: overlap (Jaccard of the two sets) {mh['candidate_overlap']:.3f}; only scratchlm "
        f"{mh['candidates_only_ours']}, only datasketch {mh['candidates_only_datasketch']} (different random hash "
        f"functions: pairs near the LSH threshold land on either side by chance). Identical clusters after "
        f"verification: {mh['identical_clusters']} of {mh['ours']['clusters']} / {mh['datasketch']['clusters']}. "
        f"Recall of the {mh['planted_pairs_above_threshold']} planted pairs with true Jaccard >= {s['threshold']}: "
        f"scratchlm {mh['recall_ours']:.3f}, datasketch {mh['recall_datasketch']:.3f}.",
        "",
    ]
    rate_rows = [[k, v["pairs"], v["mean_jaccard"], v["ours"], v["datasketch"]] for k, v in mh["by_edit_rate"].items()]
    lines.append(
        markdown_table(
            ["planted edit rate", "pairs", "mean true Jaccard", "candidates (scratchlm)", "candidates (datasketch)"],
            rate_rows,
        )
    )
    lines += ["", f"Total benchmark time {res['seconds']:.0f} s; load average at end {res['load_end'][0]:.2f}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, results to benchmarks/_work/results_quick/")
    ap.add_argument("--docs", type=int, default=1000, help="owt documents in the synthetic crawl")
    ap.add_argument("--dedup-docs", type=int, default=1000, help="owt documents in the MinHash comparison")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    check_data()
    if args.quick:
        args.docs, args.dedup_docs, args.repeats = 120, 200, 1
    out = args.out or (WORK / "results_quick" if args.quick else RESULTS)
    t0 = time.perf_counter()
    res: dict = {"machine": info()}
    paths, n_pages = synthetic_crawl(args.docs, shards=4)
    print(f"synthetic crawl: {n_pages} pages in {len(paths)} shards")
    res["stages"], res["loads"] = stage_rows(paths, args.repeats, args.quick)
    res["end_to_end"] = [end_to_end(paths, "local", 2)]
    try:
        import ray  # noqa: F401

        res["end_to_end"].append(end_to_end(paths, "ray", 2))
    except ImportError:
        print("ray not installed: no Ray row")
    for r in res["end_to_end"]:
        print(f"  end to end ({r['executor']}): {r['docs_per_s']:.1f} docs/s, {r['wall_s']:.1f} s")
    res["minhash"] = minhash_vs_datasketch(args.dedup_docs)
    res["seconds"] = time.perf_counter() - t0
    res["load_end"] = os.getloadavg()
    save_report(out, "web", markdown(res, rerun_command(MODULE)), res)


if __name__ == "__main__":
    main()
