"""One table of quality against cost for every compression of SmolLM2-135M-Instruct (issue 19), each row
measured the same way: quantised (bf16, int8, int4 RTN / GPTQ, GGUF Q8_0 / Q4_1), pruned (50% magnitude,
2:4, structured with and without recovery) and distilled (a 7.1M student, and the same student from scratch).

    PYTHONPATH=. nice python -m benchmarks.compress_table --skip-decode --jobs 2 --threads 1   # hours when busy
    PYTHONPATH=. nice python -m benchmarks.compress_table --rows int8,gptq-g64 --skip-mmlu --skip-decode
    PYTHONPATH=. python -m benchmarks.compress_table --decode-only             # the speed column, machine quiet
    PYTHONPATH=. python -m benchmarks.compress_table --table-only              # rebuild the table from the cache

The result files were made with --owt-bytes 40000 --tinystories-bytes 20000 --mmlu-per-subject 1 (pass the
same flags to add rows to them; figures measured with other flags are kept apart, not mixed in). On 2 cores
shared with other jobs (load ~10) a 135M row took ~5 min of bits/byte and ~5 min of MMLU per question per
subject at one thread, two rows at a time (~55 tokens/s per process; one 2-thread process managed ~40).
--decode-only rebuilds each model, so gptq-g64 pays its ~10 min calibration again.

Each row runs in its own process (`--worker`), so its peak RSS (ru_maxrss: loading, compressing and scoring
the model) is its own, and caches its figures in benchmarks/_work/compress_table/<row>.json; the table
(benchmarks/results/compress_table.{md,json}) is rebuilt from the cache on every call, so rows are rerun one
at a time. Columns, identical for every row:

- bits per byte (`scratchlm.eval.bpb`, context = stride = --context) on owt_mini's last whole documents
  within --owt-bytes (in the held-out last 10% of benchmarks/distill.py's split, which the students, the
  recovery fine-tune and every calibration set never saw) and the first --tinystories-bytes of tinystories_val;
- MMLU cloze accuracy (acc_norm: per-byte log-likelihood of each answer text, 0-shot) on the first
  --mmlu-per-subject validation questions of each of the 57 subjects, through `eval.loglik.Scorer`;
- tensor bytes of the model as stored (GGUF rows: the block linears at their GGUF block sizes);
- batch-1 greedy decode tokens/s through the engine (`bench_compress.decode_tps`: median of --repeats x
  --decode-tokens after a chat prompt), measured only while the 1-minute load average is below --max-load
  (the machine is shared), with the load average recorded per row.

Compression recipes are the other benchmarks' own builders: `bench_compress.build` / `gguf_roundtrip`
(quantised rows: block linears only, the tied embedding / head stay fp32), `prune_points.build` (magnitude,
2:4) and `prune_recover.prune` (structured: d_ff 1024, 25 of 30 layers, calibrated on the first 32 x 256
training tokens, the very prune that benchmarks/_work/distill/models/pruned_recovered was recovered from).
GPTQ calibrates on the same training tokens. Students have a 256-token context, so they are scored at 256;
the fp32-ctx256 row is the teacher at that context for comparison.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.prune_points import EOT, MODEL, REPO, TEXT, prefix

WORK = REPO / "benchmarks" / "_work" / "compress_table"
MODELS = REPO / "benchmarks" / "_work" / "distill" / "models"
MMLU = TEXT.parent / "instruct" / "mmlu"
OUT = REPO / "benchmarks" / "results" / "compress_table.md"

# row -> what it is; the order is the table's
ROWS = {
    "fp32": "fp32 (SmolLM2's shipped Q4_1 file dequantised)",
    "bf16": "bf16",
    "int8": "int8 per channel, RTN",
    "int8+head": "int8 per channel, RTN, head too",
    "int4-g32": "int4 group 32, RTN",
    "int4-g64": "int4 group 64, RTN",
    "gptq-g64": "int4 group 64, GPTQ (act_order)",
    "awq-g64": "int4 group 64, AWQ (scales + clipping)",
    "awq-g32": "int4 group 32, AWQ (scales + clipping)",
    "q8_0": "GGUF Q8_0 (dequantised)",
    "q4_1": "GGUF Q4_1 (dequantised)",
    "magnitude50": "50% magnitude, per linear",
    "sparse-2of4": "2:4 semi-structured",
    "structured": "structured, no recovery",
    "structured-recovered": "structured + recovery (30 steps distill)",
    "fp32-ctx256": "fp32 at context 256 (the students' context)",
    "distilled": "7.1M student, distilled",
    "scratch": "7.1M student, from scratch",
}
GGUF_ROWS = {"q8_0": "Q8_0", "q4_1": "Q4_1"}
STUDENTS = {"distilled", "scratch"}
BPB_ONLY = {"fp32-ctx256"}  # a reference point for the students' context: no MMLU, no decode
LLAMA_CPP_ANCHORS = {  # llama.cpp tools/perplexity/README.md: perplexity change against fp16 (wikitext-2)
    "Llama-2-70B (its old scorechart)": {"Q6_K": 0.16, "Q4_K_M": 1.20, "Q4_1": 2.37, "Q4_0": 3.61},
    "Llama-2-7B (its sample results, PPL ratio - 1)": {"Q8_0": 0.07, "Q6_K": 0.24, "Q4_K_M": 1.42},
}


def is_row(row: str) -> bool:
    return row in ROWS or row.startswith(("int4-g", "gptq-g")) and row[6:].isdigit() or awq_group(row) is not None


def awq_group(row: str) -> int | None:
    """The group size of an AWQ row ("awq-g64" -> 64), else None."""
    return int(row[5:]) if row.startswith("awq-g") and row[5:].isdigit() else None


# -------------------------------------------------------------------------------------------- building
def gguf_roundtrip_bytes(model, qtype: str) -> int:
    """Block linears through a GGUF type and back (bench_compress.gguf_roundtrip); the bytes they would take
    in that type (its blocks: Q8_0 34 bytes, Q4_1 20 bytes per 32 weights) replace their fp32 bytes."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from benchmarks.bench_compress import gguf_roundtrip
    from scratchlm.compress.quant import model_bytes

    block, type_bytes = GGML_QUANT_SIZES[getattr(GGMLQuantizationType, qtype)]
    linears = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("blocks.")]
    fp32 = sum(w.numel() * w.element_size() for w in linears)
    stored = sum(w.numel() // block * type_bytes for w in linears)
    gguf_roundtrip(model, qtype)
    return model_bytes(model) - fp32 + stored


def calibration_file():
    """prune_recover's training token file (owt_mini's first documents, never the held-out ones)."""
    from benchmarks.common import OWT_MINI
    from benchmarks.distill import held_out_split, make_train_file

    n_train_docs, _ = held_out_split(OWT_MINI.read_text(encoding="utf-8"))
    return make_train_file(60 * 16 * 256 + 257, n_train_docs)[0]  # prune_recover's default --train-tokens


def calibration_ids(n: int, length: int) -> torch.Tensor:
    """(n, length): the first training tokens, as prune_recover calibrates its structured prune."""
    from scratchlm.compress.structured import calibration_tokens
    from scratchlm.train.data import TokenData

    ids = TokenData(calibration_file()).tokens[: n * length].astype("int64").tolist()
    return calibration_tokens(ids, n, length)


def build(row: str, args) -> tuple:
    """(model, chat, stored bytes or None = model_bytes) of one row, from a fresh copy of the weights."""
    from scratchlm.model.model_dir import load_model

    if row in STUDENTS or row == "structured-recovered":
        name = "pruned_recovered" if row == "structured-recovered" else row
        path = MODELS / name
        if not (path / "config.json").is_file():
            raise SystemExit(f"{path} missing: run benchmarks/distill.py / prune_recover.py first")
        model, chat = load_model(path, progress=False)
        return model, chat, None
    if row in GGUF_ROWS:
        model, chat = load_model(MODEL, progress=False)
        return model, chat, gguf_roundtrip_bytes(model, GGUF_ROWS[row])
    if row in ("magnitude50", "sparse-2of4"):
        from benchmarks.prune_points import build as prune_build

        model, chat, _ = prune_build({"magnitude50": "layer50", "sparse-2of4": "2:4"}[row], "", args)
        return model, chat, None
    if row == "structured":
        from benchmarks.prune_recover import prune

        model, chat = load_model(MODEL, progress=False)
        ns = argparse.Namespace(calib_seqs=32, calib_len=256, d_ff=1024, n_heads=None, n_layers=25)
        return prune(model, calibration_file(), ns).eval(), chat, None
    if row.startswith("gptq-g"):
        from scratchlm.compress.quant import QuantConfig, quantize_model

        model, chat = load_model(MODEL, progress=False)
        cfg = QuantConfig(bits=4, group_size=int(row[6:]), method="gptq")
        return quantize_model(model, cfg, calib=calibration_ids(args.calib_seqs, args.calib_len)), chat, None
    if awq_group(row) is not None:  # calibrated on the same training tokens as GPTQ
        from scratchlm.compress.quant import QuantConfig, quantize_model

        model, chat = load_model(MODEL, progress=False)
        cfg = QuantConfig(bits=4, group_size=awq_group(row), method="awq")
        return quantize_model(model, cfg, calib=calibration_ids(args.calib_seqs, args.calib_len)), chat, None
    from benchmarks.bench_compress import build as quant_build

    model, chat = quant_build("fp32" if row == "fp32-ctx256" else row, "", args)  # "" : no GPTQ text needed
    return model, chat, None


# -------------------------------------------------------------------------------------------- measuring
def last_documents(text: str, max_bytes: int) -> str:
    """The last whole documents of `text` that fit in max_bytes together (owt_mini's end: held out)."""
    docs, total = [], 0
    for doc in reversed(text.split(EOT)):
        n = len(doc.encode("utf-8"))
        if docs and total + n > max_bytes:
            break
        docs.append(doc)
        total += n
    return EOT.join(reversed(docs))


def texts(args) -> dict[str, str]:
    from benchmarks.common import OWT_MINI

    stories = (TEXT / "tinystories_val.txt").read_text(encoding="utf-8")
    return {
        "owt_mini held-out": last_documents(OWT_MINI.read_text(encoding="utf-8"), args.owt_bytes),
        "tinystories_val": prefix(stories, args.tinystories_bytes),
    }


def settings(args, part: str) -> dict:
    """What a part's figures depend on: cached figures measured otherwise are kept out of the table."""
    keys = {"bpb": ("context", "owt_bytes", "tinystories_bytes"), "mmlu": ("context", "mmlu_per_subject")}[part]
    return {k: getattr(args, k) for k in (*keys, "calib_seqs", "calib_len")}  # calibration: GPTQ's weights


def bpb(row: str, model, chat, args) -> dict:
    from scratchlm.eval.bpb import bits_per_byte

    context = 256 if row in STUDENTS | BPB_ONLY else args.context
    out = {}
    with torch.no_grad():
        for name, text in texts(args).items():
            r = bits_per_byte(model, chat, text, context=context, stride=context)
            out[name] = {k: r[k] for k in ("bits_per_byte", "tokens", "bytes", "documents", "context", "seconds")}
            print(f"{row}: {name} {r['bits_per_byte']:.4f} bits/byte ({r['seconds']:.0f} s)", flush=True)
    return out


def mmlu_cloze(row: str, model, chat, args) -> dict:
    from scratchlm.eval import mmlu
    from scratchlm.eval.loglik import Scorer
    from scratchlm.eval.tasks import evaluate_mc

    t0 = time.perf_counter()
    examples = mmlu.load(MMLU, "val", 0, args.mmlu_per_subject, None, fmt="cloze")
    scorer = Scorer(model, chat, batch_size=8, max_length=args.context)
    metrics, _ = evaluate_mc(scorer, examples)
    out = {k: metrics[k] for k in ("n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}
    print(f"{row}: MMLU cloze acc_norm {metrics['acc_norm']:.3f} +- {metrics['acc_norm_stderr']:.3f}", flush=True)
    return out | {"truncated": scorer.truncated, "max_length": scorer.max_length, "seconds": time.perf_counter() - t0}


def decode(row: str, model, chat, args) -> dict:
    """Batch-1 greedy decode tok/s, or why not (load too high)."""
    load = os.getloadavg()[0]
    out = {"load_before": load, "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if load >= args.max_load:
        return out | {"tok_s": None, "why": f"not measured (load {load:.1f})"}
    from benchmarks.bench_compress import decode_tps

    rates = [decode_tps(model, chat, args.decode_tokens, 1) for _ in range(args.repeats)]
    out |= {"tok_s": statistics.median(rates), "runs": rates}
    if args.trace_requests:  # many requests at once: batched decode steps and chunked prefills
        from benchmarks.bench_engine import run_engine, trace

        ctx = model.config.context_length  # the students take 256 tokens: their prompts keep their ends
        reqs = [(p[-(ctx - k - 1) :] if len(p) + k >= ctx else p, k) for p, k in trace(0, args.trace_requests,
                                                                                     args.trace_tokens)]  # fmt: skip
        runs = [run_engine(model, chat, reqs, kv_cache_mb=512) for _ in range(2)]
        best = max(runs, key=lambda r: r["tok_s"])
        out |= {"trace": {"requests": len(reqs), "tokens": best["tokens"], "tok_s": best["tok_s"],
                          "runs": [r["tok_s"] for r in runs],
                          "prompt_tokens": sum(len(p) for p, _ in reqs)}}  # fmt: skip
    return out | {"load_after": os.getloadavg()[0]}


def parts_of(row: str, args) -> list[str]:
    """What a run measures for `row`: bpb, mmlu, decode, after the --skip-* / --*-only flags."""
    if args.decode_only:
        wanted = ["decode"]
    elif args.mmlu_only:
        wanted = ["mmlu"]
    else:
        wanted = ["bpb"] + ([] if args.skip_mmlu else ["mmlu"]) + ([] if args.skip_decode else ["decode"])
    if row in BPB_ONLY:
        return [w for w in wanted if w == "bpb"]
    if row in GGUF_ROWS:  # dequantised to fp32: its decode is the fp32 row's
        return [w for w in wanted if w != "decode"]
    return wanted


def worker(row: str, args) -> None:
    """Build one row, measure its parts and merge them into its cache file."""
    from scratchlm.compress.quant import model_bytes

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, chat, stored = build(row, args)
    rec = {"row": row, "label": ROWS.get(row, row), "build_s": time.perf_counter() - t0, "threads": args.threads}
    rec["bytes"] = stored if stored is not None else model_bytes(model)
    quantised = [m for m in model.modules() if hasattr(m, "qweight")]  # their weights are buffers, not parameters
    rec["params"] = model.num_params + sum(m.in_features * m.out_features for m in quantised)
    parts = parts_of(row, args)
    if "bpb" in parts:
        rec |= {"bpb": bpb(row, model, chat, args), "bpb_settings": settings(args, "bpb")}
    if "mmlu" in parts:
        rec |= {"mmlu": mmlu_cloze(row, model, chat, args), "mmlu_settings": settings(args, "mmlu")}
    if "decode" in parts:
        rec["decode"] = decode(row, model, chat, args)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    rec["peak_rss_mib"] = {"+".join(parts): rss}
    path = WORK / f"{row}.json"
    with open(WORK / f"{row}.lock", "w") as lock:  # two runs (say bpb and MMLU) may finish the same row at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.is_file() else {}
        rec["peak_rss_mib"] = old.get("peak_rss_mib", {}) | rec["peak_rss_mib"]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(old | rec, indent=1))
        tmp.replace(path)


# -------------------------------------------------------------------------------------------- table
def nats(b: dict) -> float:
    """Mean nats per token of a bits-per-byte record."""
    return b["bits_per_byte"] * b["bytes"] * math.log(2) / b["tokens"]


def fmt_delta(x: float, base: float | None) -> str:
    return f"{x:.4f}" + ("" if base is None else f" ({100 * (x / base - 1):+.1f}%)")


def table(args) -> None:
    """benchmarks/results/compress_table.{md,json} from the cache: each part only where measured with the
    current settings (others are listed as left out)."""
    recs, stale = {}, []
    for path in sorted(WORK.glob("*.json")):
        rec = json.loads(path.read_text())
        for part in ("bpb", "mmlu"):
            if part in rec and rec.get(f"{part}_settings") != settings(args, part):
                stale.append(f"{rec['row']} ({part})")
                del rec[part]
        recs[rec["row"]] = rec
    order = [r for r in ROWS if r in recs] + sorted(r for r in recs if r not in ROWS)
    base, base256 = recs.get("fp32", {}).get("bpb", {}), recs.get("fp32-ctx256", {}).get("bpb", {})
    names = ("owt_mini held-out", "tinystories_val")
    lines = []
    for row in order:
        rec = recs[row]
        ref = base256 if row in STUDENTS else base if row not in BPB_ONLY else {}
        cells = [ROWS.get(row, rec["label"]), f"{rec['params'] / 1e6:.1f}M", f"{rec['bytes'] / 2**20:.0f}"]
        for n in names:
            b = rec.get("bpb", {}).get(n)
            cells.append("-" if b is None else fmt_delta(b["bits_per_byte"], ref.get(n, {}).get("bits_per_byte")))
        b, r = rec.get("bpb", {}).get(names[0]), ref.get(names[0])
        cells.append("-" if b is None or r is None else f"{100 * (math.exp(nats(b) - nats(r)) - 1):+.1f}%")
        m = rec.get("mmlu")
        cells.append("-" if m is None else f"{100 * m['acc_norm']:.1f} ± {100 * m['acc_norm_stderr']:.1f}")
        # the quality runs' peak: a speed run also holds the trace's KV cache (512 MiB, preallocated)
        rss = max((v for k, v in rec.get("peak_rss_mib", {}).items() if k != "decode"), default=None)
        cells.append("-" if rss is None else f"{rss:.0f}")
        d = rec.get("decode")
        int4_twin = row.startswith(("gptq-g", "awq-g")) and not (d or {}).get("tok_s")
        if row in GGUF_ROWS:
            cells.append("= fp32 (dequantised)")
        elif int4_twin:  # GPTQ / AWQ weights are int4 in RTN's format: the same kernel reads them
            cells.append(f"= int4 group {row.split('-g')[1]} (same format)")
        elif d is None:
            cells.append("-" if row in BPB_ONLY else "not measured")
        elif d.get("tok_s") is None:
            cells.append(d["why"])
        else:
            cells.append(f"{d['tok_s']:.1f} (load {d['load_before']:.1f})")
        t = (d or {}).get("trace")
        if t or int4_twin:
            cells.append(f"{t['tok_s']:.1f}" if t else f"= int4 group {row.split('-g')[1]}")
        else:
            cells.append("-" if row in BPB_ONLY | set(GGUF_ROWS) else "not measured")
        lines.append("| " + " | ".join(cells) + " |")
    sample = next((r["bpb"] for r in recs.values() if "bpb" in r), {})
    threads = "/".join(str(t) for t in sorted({r.get("threads", args.threads) for r in recs.values()}))
    sizes = "; ".join(f"{n}: {b['bytes']} bytes, {b['documents']} docs" for n, b in sample.items())
    md = [
        f"# Compression of {MODEL}: quality against cost, one protocol (CPU)",
        "",
        f"bits per byte (`eval.bpb`, context = stride = {args.context}; the students and fp32-ctx256 at 256, the "
        f"students' context; in parentheses the change against fp32 at the same context) on {sizes}. The owt_mini "
        "text is its last whole documents, in the held-out last 10% (benchmarks/distill.py's split): no student, "
        "recovery fine-tune or calibration set saw it. MMLU: cloze (answer text), 0-shot, acc_norm ± stderr, the "
        f"first {args.mmlu_per_subject} validation question(s) of each of the 57 subjects (chance: 25%). MiB = "
        "tensor bytes as stored (quantised rows: packed weights + scales + the fp32 tied embedding; GGUF rows: the "
        "block linears at their GGUF block size; pruned rows are stored dense). Peak RSS = ru_maxrss of the row's "
        "own process (loading the fp32 weights, compressing, scoring: an upper bound on serving memory). decode = "
        f"batch-1 greedy tokens/s through the engine, median of {args.repeats} x {args.decode_tokens} tokens, with "
        "the 1-minute load average beside it (the measuring process's own 2 threads count: ~1-2 on a quiet machine; "
        f"not measured at --max-load or above, {args.max_load} by default; 2 cores shared with other jobs). "
        f"trace = the engine's output tokens/s on {args.trace_requests} requests at once (bench_engine.trace: "
        f"random prompts of 50-500 tokens, greedy, 50-{args.trace_tokens} output tokens each; prompts cut to the "
        "students' 256-token context keep their ends), best of 2 runs, in the same process right after decode.",
        "",
        "| model | params | MiB | owt_mini held-out bits/byte | tinystories_val bits/byte | owt ppl vs fp32 "
        "| MMLU cloze acc_norm % | peak RSS MiB | decode tok/s | trace tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *lines,
        "",
        "Anchors, llama.cpp's published perplexity changes against fp16 (tools/perplexity/README.md, wikitext-2): "
        + "; ".join(f"{m}: " + ", ".join(f"{q} +{d:.2f}%" for q, d in v.items()) for m, v in LLAMA_CPP_ANCHORS.items())
        + ". Compare them with the ppl column (token perplexity on the owt_mini text against fp32, all rows share "
        "SmolLM2's tokenizer), not with bits/byte: bits/byte is log-perplexity per byte, so +1% bits/byte is "
        "about +3% perplexity here. Big models quantise more gracefully than a 135M one.",
        "",
    ]
    if stale:
        md += [f"Cached figures measured with other settings, left out: {', '.join(stale)}.", ""]
    md += [
        f"torch {torch.__version__}, {threads} torch thread(s) per row process. Rerun: `PYTHONPATH=. nice python -m "
        f"benchmarks.compress_table {' '.join(worker_args(args, quality_only=True))}` (rows one at a time: "
        "`--rows int8,gptq-g64`; speed only, machine quiet: `--decode-only`).",
        "",
    ]
    old = OUT.read_text() if OUT.is_file() else ""
    if READING in old:  # the hand-written reading survives table rebuilds
        md += [READING + old.split(READING, 1)[1].rstrip(), ""]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text("\n".join(md))
    tmp.replace(OUT)
    out_json = OUT.with_suffix(".json")
    tmp = out_json.with_suffix(".json.tmp")
    report = {"model": MODEL, "settings": {p: settings(args, p) for p in ("bpb", "mmlu")},
              "rows": [recs[r] for r in order], "left_out": stale,
              "anchors_llama_cpp_ppl_change_percent": LLAMA_CPP_ANCHORS, "torch": torch.__version__}  # fmt: skip
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out_json)
    print(f"wrote {OUT} and {out_json}", flush=True)


def worker_args(args, quality_only: bool = False) -> list[str]:
    """The measuring options as command-line flags (for a row's own process, or the rerun line)."""
    keys = ("context", "owt_bytes", "tinystories_bytes", "mmlu_per_subject", "calib_seqs", "calib_len")
    if not quality_only:
        keys += ("decode_tokens", "repeats", "max_load", "threads", "skip_mmlu", "skip_decode", "decode_only")
        keys += ("trace_requests", "trace_tokens")
        keys += ("mmlu_only",)
    flags = []
    for k in keys:
        v = getattr(args, k)
        if isinstance(v, bool):
            flags += [f"--{k.replace('_', '-')}"] if v else []
        else:
            flags.append(f"--{k.replace('_', '-')}={v}")
    return flags


READING = "## Reading"  # heading of the hand-written part of the .md, kept across table rebuilds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)} (or int4-gN, gptq-gN)"
    )
    p.add_argument("--skip-decode", action="store_true", help="quality columns only")
    p.add_argument("--skip-mmlu", action="store_true", help="no MMLU (the slow column)")
    p.add_argument("--decode-only", action="store_true", help="refresh the speed columns (decode, trace) only")
    p.add_argument("--mmlu-only", action="store_true", help="the MMLU column only")
    p.add_argument("--table-only", action="store_true", help="rebuild the table from the cache")
    p.add_argument("--jobs", type=int, default=1, help="rows measured at once, each in its own process")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--owt-bytes", type=int, default=40_000)
    p.add_argument("--tinystories-bytes", type=int, default=40_000)
    p.add_argument("--mmlu-per-subject", type=int, default=3)
    p.add_argument("--calib-seqs", type=int, default=32, help="GPTQ calibration sequences (training tokens)")
    p.add_argument("--calib-len", type=int, default=256)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trace-requests", type=int, default=16, help="requests of the trace column (0: none)")
    p.add_argument("--trace-tokens", type=int, default=128, help="most output tokens a trace request asks for")
    p.add_argument("--max-load", type=float, default=1.5, help="decode only below this 1-minute load average")
    p.add_argument("--threads", type=int, default=2, help="torch threads per row process")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if (args.decode_only and args.mmlu_only) or (
        (args.decode_only or args.mmlu_only) and (args.skip_decode or args.skip_mmlu)
    ):
        p.error("--decode-only / --mmlu-only exclude each other and the --skip-* flags")
    if args.worker:
        worker(args.worker, args)
        return
    rows = args.rows.split(",")
    bad = [r for r in rows if not is_row(r)]
    if bad:
        p.error(f"unknown rows {bad}: expected {', '.join(ROWS)} (or int4-gN / gptq-gN)")
    WORK.mkdir(parents=True, exist_ok=True)
    todo = [] if args.table_only else [r for r in rows if parts_of(r, args)]
    running, failed = {}, []
    while todo or running:
        while todo and len(running) < args.jobs:
            row = todo.pop(0)
            cmd = [sys.executable, "-m", "benchmarks.compress_table", *worker_args(args), "--worker", row]
            running[row] = (subprocess.Popen(cmd, cwd=REPO), time.perf_counter())
        time.sleep(1)
        for row, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                del running[row]
                print(f"== {row}: rc {proc.returncode}, {time.perf_counter() - t0:.0f} s", flush=True)
                failed += [row] if proc.returncode else []
                table(args)
    table(args)
    if failed:
        sys.exit(f"rows failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
