"""`scratchlm eval run` and `scratchlm eval compare`.

scratchlm eval run --model smollm2-135m-instruct --tasks mmlu,gsm8k,bpb:owt_mini --out evals/smol --limit 5
scratchlm eval compare evals/smol evals/mine
scratchlm eval judge --instructions alpaca_eval.jsonl --a a.jsonl --b b.jsonl --judge-url http://HOST/v1 --out evals/j
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
        help="comma-separated: mmlu[:subj+subj], mmlu_cloze[:subj+subj], gsm8k, bpb:FILE, mc:FILE.jsonl, "
        "task:FILE.toml",
    )
    r.add_argument("--out", required=True, help="output directory (rerun with the same one to resume)")
    r.add_argument("--limit", type=int, default=None, help="examples per task (per subject for MMLU)")
    r.add_argument(
        "--num-fewshot", type=int, default=None, help="few-shot examples (default: 5 for mmlu/gsm8k, 0 for mmlu_cloze)"
    )
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

    j = verbs.add_parser("judge", help="LLM-as-judge pairwise comparison with position-swap debiasing")
    j.add_argument("--instructions", required=True, help="JSONL with an 'instruction' field (alpaca_eval.jsonl)")
    j.add_argument(
        "--a", required=True, help="model A outputs: JSONL {instruction, output}, or a model name with --a-url"
    )
    j.add_argument("--b", required=True, help="model B outputs: JSONL, or a model name with --b-url")
    j.add_argument("--a-url", default=None, help="OpenAI-compatible base URL that generates A's outputs")
    j.add_argument("--b-url", default=None, help="OpenAI-compatible base URL that generates B's outputs")
    j.add_argument("--judge-url", required=True, help="OpenAI-compatible base URL of the judge")
    j.add_argument("--judge-model", default="judge")
    j.add_argument("--api-key", default="none", help="API key for all endpoints (or OPENAI_API_KEY)")
    j.add_argument("--limit", type=int, default=None)
    j.add_argument("--offset", type=int, default=0)
    j.add_argument("--gen-max-tokens", type=int, default=128)
    j.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    j.add_argument("--max-requests", type=int, default=None, help="stop after N judge requests (rerun to resume)")
    j.add_argument("--out", required=True, help="output directory (rerun with the same one to resume)")
    j.set_defaults(func=judge)


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


def judge(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from scratchlm.errors import ScratchLMError
    from scratchlm.eval import judge as J

    if args.limit is not None and args.limit < 1:
        raise ScratchLMError(f"--limit must be >= 1, got {args.limit}")
    key = os.environ.get("OPENAI_API_KEY", args.api_key) if args.api_key == "none" else args.api_key
    insts = J.load_instructions(args.instructions, args.limit, args.offset)
    outs = []
    for name, src, url in (("a", args.a, args.a_url), ("b", args.b, args.b_url)):
        if url:
            path = Path(args.out) / f"outputs_{name}.jsonl"
            outs.append(J.generate_outputs(insts, url, src, path, key, args.gen_max_tokens, timeout=args.timeout))
        else:
            outs.append(J.load_outputs(src, insts))
    pairs = [J.Pair(i, x, y) for i, x, y in zip(insts, outs[0], outs[1], strict=True)]
    cfg = J.JudgeConfig(
        base_url=args.judge_url,
        model=args.judge_model,
        api_key=key,
        timeout=args.timeout,
        max_requests=args.max_requests,
    )
    res = J.judge_pairs(pairs, cfg, args.out, names=(Path(args.a).stem, Path(args.b).stem))
    print(J.report(res))
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
