"""`scratchlm train` and `scratchlm sweep` (`scratchlm generate` lives in `scratchlm.infer.cli`)."""

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
    if args.parallel is not None:
        if args.parallel < 1:
            from scratchlm.errors import ScratchLMError

            raise ScratchLMError(f"--parallel must be >= 1, got {args.parallel}")
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
