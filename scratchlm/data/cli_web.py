"""`scratchlm data run|inspect|classify|dedup|quality`: the web-data verbs (heavy imports inside each verb)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register_web(verbs) -> None:
    r = verbs.add_parser(
        "run",
        help="run a web-data pipeline (TOML) over shards; resumable",
        description="Run the stages of PIPELINE over its input shards. Finished shards are skipped on a rerun; "
        "the report (documents and bytes in/out per stage, drop reasons with examples) lands in the output dir.",
    )
    r.add_argument("pipeline", help="pipeline .toml file, or the name of one in configs/data/")
    r.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a setting"
    )
    r.add_argument("--executor", choices=("local", "ray"), help="shortcut for --set executor=...")
    r.add_argument("--workers", type=int, help="shortcut for --set workers=N")
    r.add_argument("--out", help="shortcut for --set output.dir=DIR")
    r.add_argument("--force", action="store_true", help="discard previous outputs instead of resuming")
    r.add_argument("--print-config", action="store_true", help="print the resolved pipeline and exit")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    i = verbs.add_parser("inspect", help="read a WARC/WET/JSONL/text file and show what the reader makes of it")
    i.add_argument("path", type=Path)
    i.add_argument("--format", default="auto", choices=("auto", "warc", "wet", "jsonl", "text"))
    i.add_argument("--show", type=int, default=3, help="documents to print (default 3)")
    i.add_argument("--extract", action="store_true", help="print extracted text of HTML documents")
    i.set_defaults(func=cmd_inspect)

    c = verbs.add_parser("classify", help="language, NSFW, toxicity, Gopher rules and PII counts of one text")
    c.add_argument("text", help="the text (or @path to read a file)")
    c.add_argument(
        "--quality-model", nargs="?", const="", help="also score with this quality model (no value: the default one)"
    )
    c.set_defaults(func=cmd_classify)

    d = verbs.add_parser("dedup", help="deduplicate files: exact documents, exact lines, or MinHash near-duplicates")
    d.add_argument("method", choices=("exact", "lines", "minhash"))
    d.add_argument(
        "--input", nargs="+", required=True, type=Path, help="files (.jsonl: a document per line, else one per file)"
    )
    d.add_argument("--out", required=True, type=Path, help="output directory (same file names)")
    d.add_argument("--num-hashes", type=int, default=128)
    d.add_argument("--num-bands", type=int, default=16)
    d.add_argument("--ngrams", type=int, default=5)
    d.add_argument("--jaccard-threshold", type=float, default=0.8)
    d.add_argument("--workers", type=int, default=0, help="processes (0 = one per core)")
    d.set_defaults(func=cmd_dedup)

    q = verbs.add_parser("quality", help="train or apply the hashed n-gram quality classifier")
    qv = q.add_subparsers(dest="quality_verb", metavar="<train|apply|default>", required=True)
    dq = qv.add_parser("default", help="build (first use) and describe the toy default model: data, accuracy, limits")
    dq.add_argument("--rebuild", action="store_true", help="build it again")
    dq.set_defaults(func=cmd_quality_default)
    t = qv.add_parser("train", help="train on positive (trusted) and negative (random web) documents")
    t.add_argument(
        "--positive", nargs="+", required=True, type=Path, help="files of trusted documents (any reader format)"
    )
    t.add_argument("--negative", nargs="+", required=True, type=Path, help="files of random web documents")
    t.add_argument("--out", required=True, type=Path, help="model directory to write")
    t.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="e.g. epochs=10, dim=32"
    )
    t.add_argument("--force", action="store_true", help="replace an existing model directory")
    t.set_defaults(func=cmd_quality_train)
    a = qv.add_parser("apply", help="score documents (meta.quality) and optionally keep those above a threshold")
    a.add_argument("--model", required=True, help="model directory or fastText .bin")
    a.add_argument("--input", nargs="+", required=True, type=Path)
    a.add_argument("--out", required=True, type=Path, help="JSONL file to write")
    a.add_argument("--threshold", type=float, help="keep documents with P(positive) >= threshold (default: keep all)")
    a.add_argument("--positive-label", default="hq")
    a.set_defaults(func=cmd_quality_apply)


def cmd_run(args: argparse.Namespace) -> int:
    from scratchlm.config import load_config, to_toml
    from scratchlm.data.pipeline import PipelineConfig
    from scratchlm.data.runner import run_pipeline, summary_line

    extra = {"executor": args.executor, "workers": args.workers}
    if args.out:
        extra["output"] = {"dir": args.out}
    base = {k: v for k, v in extra.items() if v is not None}
    cfg = load_config(PipelineConfig, "data", args.pipeline, args.overrides, base=base)
    if args.print_config:
        print(to_toml(cfg), end="")
        return 0
    report = run_pipeline(cfg, force=args.force, progress=not args.quiet)
    print(summary_line(report))
    print(f"report: {Path(cfg.output.dir) / 'report.md'}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from scratchlm.data.readers import ReadOptions, detect_format, read_documents
    from scratchlm.data.stats import StageStats

    stats = StageStats("read", max_examples=3)
    fmt = detect_format(args.path) if args.format == "auto" else args.format
    shown = 0
    for doc in read_documents(args.path, stats, ReadOptions(format=args.format)):
        if shown < args.show:
            shown += 1
            body = doc.text
            if doc.html is not None:
                if args.extract:
                    from scratchlm.data.extract import extract_text

                    body = extract_text(doc.html)
                else:
                    body = f"[{len(doc.html):,} bytes of HTML; --extract to see the text]"
            print(f"--- {doc.id}  {doc.url or ''}\n{body[:600]}")
    d = stats.to_dict()
    mb_out, mb_in = d["bytes_out"] / 1e6, d["bytes_in"] / 1e6
    print(f"\n{args.path}: format {fmt}, {d['docs_out']:,} documents ({mb_out:,.2f} MB) from {mb_in:,.2f} MB")
    for reason, n in d["drops"].items():
        print(f"  dropped {n:,}: {reason}")
    for event, n in d["counters"].items():
        print(f"  {event}: {n:,}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from scratchlm.config import text_argument
    from scratchlm.data import pii
    from scratchlm.data.harmful import classify_nsfw, classify_toxic_speech
    from scratchlm.data.langid import identify_language
    from scratchlm.data.quality_rules import gopher_quality_failures, repetition_failures
    from scratchlm.io import check_input_file

    if args.text.startswith("@"):  # a file (invalid UTF-8 in it is replaced, as the pipeline's readers do)
        text = check_input_file(args.text[1:], "text file (@path)").read_text(encoding="utf-8", errors="replace")
    else:
        text = text_argument(args.text, "the text to classify")
    lang, score = identify_language(text)
    print(f"language    {lang} ({score:.3f})")
    print("nsfw        {} ({:.3f})".format(*classify_nsfw(text)))
    print("toxic       {} ({:.3f})".format(*classify_toxic_speech(text)))
    print(f"gopher      {', '.join(gopher_quality_failures(text)) or 'pass'}")
    print(f"repetition  {', '.join(repetition_failures(text)) or 'pass'}")
    counts = [pii.mask_emails(text)[1], pii.mask_phone_numbers(text)[1], pii.mask_ips(text)[1]]
    print("pii         {} emails, {} phone numbers, {} IPs".format(*counts))
    if args.quality_model is not None:
        from scratchlm.data.quality_model import classify_quality

        print("quality     {} ({:.3f})".format(*classify_quality(text, args.quality_model)))
    return 0


def cmd_dedup(args: argparse.Namespace) -> int:
    from scratchlm.data import dedup

    workers = args.workers or None
    if args.method == "exact":
        result = dedup.exact_dedup(args.input, args.out, workers=workers)
    elif args.method == "lines":
        result = dedup.exact_line_dedup(args.input, args.out, workers=workers)
    else:
        result = dedup.minhash_dedup(
            args.input, args.num_hashes, args.num_bands, args.ngrams, args.jaccard_threshold, args.out, workers=workers
        )
    print(", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in result.items()) + f" -> {args.out}")
    return 0


def cmd_quality_train(args: argparse.Namespace) -> int:
    from scratchlm.config import load_config
    from scratchlm.data.quality_model import QualityTrainConfig, train_quality_model
    from scratchlm.errors import ScratchLMError
    from scratchlm.io import check_writable

    if args.out.exists() and not args.force:
        raise ScratchLMError(f"{args.out} already exists (pass --force to replace it)")
    cfg = load_config(QualityTrainConfig, overrides=args.overrides)
    check_writable(args.out, "quality model directory")  # before training
    model = train_quality_model(args.positive, args.negative, cfg, out=args.out, overwrite=args.force)
    print(f"wrote {args.out}/ (labels {model.labels}, {model.E.shape[0]:,} buckets x {model.E.shape[1]} dims)")
    return 0


def cmd_quality_default(args: argparse.Namespace) -> int:
    from scratchlm.data.default_quality import ensure_default_quality_model
    from scratchlm.io import read_json

    path = ensure_default_quality_model(rebuild=args.rebuild)
    meta = read_json(path / "meta.json", "quality model meta.json")
    held, probes = meta.get("held_out", {}), meta.get("probes", {})
    print(f"default quality model: {path}")
    for key in ("positive_sources", "negative_sources"):
        print(f"{key.split('_')[0]:9s} " + "; ".join(meta.get(key, [])))
    print(f"held-out  accuracy {held.get('accuracy')} on {held.get('documents')} documents ({held.get('note')})")
    print(f"probes    accuracy {probes.get('accuracy')} on {probes.get('documents')} documents ({probes.get('note')})")
    print(f"limits    {meta.get('limits')}")
    return 0


def cmd_quality_apply(args: argparse.Namespace) -> int:
    from scratchlm.data.harmful import positive_probability
    from scratchlm.data.quality_model import classify_quality
    from scratchlm.data.readers import read_documents
    from scratchlm.data.stats import StageStats
    from scratchlm.io import atomic_write

    if args.threshold is not None and not 0 <= args.threshold <= 1:
        from scratchlm.errors import ScratchLMError

        raise ScratchLMError(f"--threshold must be a probability in [0, 1], got {args.threshold}")
    kept = total = 0
    with atomic_write(args.out, "w", encoding="utf-8") as out:
        for path in args.input:
            for doc in read_documents(path, StageStats("read")):
                total += 1
                p = positive_probability(*classify_quality(doc.text, args.model), args.positive_label)
                doc.meta["quality"] = round(p, 4)
                if args.threshold is None or p >= args.threshold:
                    out.write(doc.to_json() + "\n")
                    kept += 1
    print(f"{kept:,} of {total:,} documents kept -> {args.out}")
    return 0
