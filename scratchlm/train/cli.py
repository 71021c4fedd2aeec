"""`scratchlm train` and `scratchlm generate`."""

from __future__ import annotations

import argparse
from pathlib import Path

from scratchlm.config import add_config_arguments, config_from_args, to_toml


def register(subparsers) -> None:
    t = subparsers.add_parser(
        "train",
        help="train a model (presets in configs/train/)",
        description="Train a model. Multi-process: torchrun --nproc_per_node N -m scratchlm train ...",
    )
    add_config_arguments(t, "train")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    t.add_argument("--out", help="run directory (shortcut for --set out_dir=...)")
    t.add_argument("--force", action="store_true", help="replace an existing run in the run directory")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    t.set_defaults(func=cmd_train)

    g = subparsers.add_parser("generate", help="sample text from a trained run")
    g.add_argument("--run", type=Path, required=True, help="run directory (its best, else latest checkpoint)")
    g.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    g.add_argument("--max-new-tokens", type=int, default=100)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    g.set_defaults(func=cmd_generate)

    s = subparsers.add_parser("sweep", help="grid / list of training runs and their results table")
    verbs = s.add_subparsers(dest="verb", metavar="<verb>", required=True)
    r = verbs.add_parser("run", help="run every point of a sweep spec (finished points are skipped)")
    r.add_argument("spec", type=Path, help="sweep TOML (see scratchlm/train/sweep.py)")
    r.add_argument("--parallel", type=int, default=None, help="training processes at once (overrides the spec)")
    r.set_defaults(func=cmd_sweep_run)
    rep = verbs.add_parser("report", help="rewrite results.{csv,md,png} of a sweep directory")
    rep.add_argument("out_dir", type=Path)
    rep.set_defaults(func=cmd_sweep_report)


def cmd_sweep_run(args: argparse.Namespace) -> int:
    from scratchlm.train.sweep import load_spec, run_sweep

    spec = load_spec(args.spec)
    if args.parallel:
        spec.parallel = args.parallel
    rows = run_sweep(spec)
    print((spec.out_dir / "results.md").read_text())
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from scratchlm.train.sweep import report

    report(args.out_dir)
    print((args.out_dir / "results.md").read_text())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from scratchlm.config import load_config
    from scratchlm.errors import ScratchLMError
    from scratchlm.train.config import TrainConfig

    if args.resume is not None:
        snapshot = args.resume / "config.toml"
        if not snapshot.is_file():
            raise ScratchLMError(f"cannot resume {args.resume}: no config.toml there (not a run directory?)")
        cfg = load_config(TrainConfig, "train", str(snapshot), args.overrides, base={"out_dir": str(args.resume)})
    else:
        cfg = config_from_args(TrainConfig, "train", args, {"out_dir": args.out})
    if args.print_config:
        print(to_toml(cfg), end="")
        return 0
    from scratchlm.train.loop import train

    summary = train(cfg, resume=args.resume is not None, overwrite=args.force, progress=not args.quiet)
    steps, tokens, seconds = summary["steps"], summary["tokens"], summary["seconds"]
    print(f"done: {steps} steps, {tokens:,} tokens in {seconds:.0f} s -> {summary['run_dir']}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from scratchlm.train.run import load_run

    model, tokenizer, _ = load_run(args.run, which=args.checkpoint)
    from scratchlm.model.generate import generate

    sep = tokenizer.special_ids.get("<|endoftext|>")
    ids = tokenizer.encode(args.prompt) if args.prompt else [sep if sep is not None else 0]
    out = generate(
        model,
        ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_tokens=[sep] if sep is not None else (),
        max_len=max(model.config.context_length, len(ids) + args.max_new_tokens)
        if model.config.positions in ("rope", "none")
        else None,
    )
    print(args.prompt + tokenizer.decode(out[len(ids) :]))
    return 0
