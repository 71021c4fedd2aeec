"""`scratchlm eval run` and `scratchlm eval compare`.

scratchlm eval run --model smollm2-135m-instruct --tasks mmlu,gsm8k,bpb:owt_mini --out evals/smol --limit 5
scratchlm eval compare evals/smol evals/mine
scratchlm eval download hellaswag --out data/hellaswag_val.jsonl     # then --tasks mc:data/hellaswag_val.jsonl
scratchlm eval convert piqa valid.jsonl --labels valid-labels.lst --out data/piqa_val.jsonl
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model: MMLU, GSM8K, bits per byte, your tasks")
    verbs = p.add_subparsers(dest="verb", metavar="<verb>")

    r = verbs.add_parser("run", help="score a model on tasks; write results.json, report.md, plots")
    r.add_argument("--model", required=True, help="run directory, model directory, .gguf or pretrained name")
    r.add_argument(
        "--tasks",
        required=True,
        help="comma-separated: mmlu[:subj+subj], gsm8k, bpb:FILE, mc:FILE.jsonl, task:FILE.toml",
    )
    r.add_argument("--out", required=True, help="output directory (rerun with the same one to resume)")
    r.add_argument("--limit", type=int, default=None, help="examples per task (per subject for MMLU)")
    r.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: 5 for mmlu/gsm8k)")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--seed", type=int, default=1234)
    r.add_argument("--chat", action="store_true", help="GSM8K through the model's chat template")
    r.add_argument("--max-tokens", type=int, default=256, help="generation budget (GSM8K)")
    r.add_argument(
        "--truncate",
        choices=["left", "error"],
        default="left",
        help="a prompt longer than the context: cut from the left (warn) or refuse",
    )
    r.add_argument("--context", type=int, default=None, help="bpb window (default: the model's context)")
    r.add_argument("--stride", type=int, default=None, help="bpb stride (default: disjoint windows)")
    r.add_argument("--mmlu-split", default="val")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument(
        "--checkpoints",
        action="store_true",
        help="--model is a training run: score every saved checkpoint, plot the scores next to its validation curves",
    )
    r.set_defaults(func=run)

    from scratchlm.eval.mc_tasks import CONVERTERS, SOURCES

    d = verbs.add_parser("download", help="download HellaSwag/ARC/PIQA as a multiple-choice JSONL (needs internet)")
    d.add_argument("task", choices=sorted(SOURCES))
    d.add_argument("--split", default="validation", help="validation (default), train, or test (ARC only)")
    d.add_argument("--out", required=True, help="the JSONL to write (then --tasks mc:OUT)")
    d.add_argument("--limit", type=int, default=None, help="only the first N examples")
    d.set_defaults(func=download)

    v = verbs.add_parser("convert", help="convert a local HellaSwag/ARC/PIQA file to the multiple-choice JSONL")
    v.add_argument("task", choices=sorted(CONVERTERS))
    v.add_argument("file", help="the published file (JSONL)")
    v.add_argument("--labels", default=None, help="PIQA: its -labels.lst file")
    v.add_argument("--out", required=True)
    v.set_defaults(func=convert)

    c = verbs.add_parser("compare", help="several result directories side by side (Markdown)")
    c.add_argument("dirs", nargs="+")
    c.add_argument("--out", default=None, help="also write the table to this file")
    c.set_defaults(func=compare)


def run(args: argparse.Namespace) -> int:
    from scratchlm.errors import ScratchLMError
    from scratchlm.eval.run import Settings, evaluate

    for name in ("limit", "batch_size", "max_tokens", "context", "stride"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ScratchLMError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    settings = Settings(
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        seed=args.seed,
        chat=args.chat,
        max_tokens=args.max_tokens,
        truncate=args.truncate,
        context=args.context,
        stride=args.stride,
        mmlu_split=args.mmlu_split,
        progress=not args.no_progress,
    )
    if args.checkpoints:
        from scratchlm.eval.checkpoints import evaluate_checkpoints, table

        print(table(evaluate_checkpoints(args.model, args.tasks, args.out, settings)))
        return 0
    results = evaluate(args.model, args.tasks, args.out, settings)
    from scratchlm.eval.report import card

    print(card(results))
    return 0


def compare(args: argparse.Namespace) -> int:
    from scratchlm.eval.report import compare as table
    from scratchlm.io import atomic_write

    text = table(args.dirs)
    if args.out:
        with atomic_write(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
    return 0


def download(args: argparse.Namespace) -> int:
    from scratchlm.eval.mc_tasks import download as fetch

    records = fetch(args.task, args.split, args.out, args.limit)
    print(f"{args.task} {args.split}: {len(records)} examples -> {args.out}")
    return 0


def convert(args: argparse.Namespace) -> int:
    from scratchlm.eval.mc_tasks import convert_file, write_mc_jsonl

    records = convert_file(args.task, args.file, args.labels)
    write_mc_jsonl(records, args.out)
    print(f"{args.task}: {len(records)} examples -> {args.out}")
    return 0
