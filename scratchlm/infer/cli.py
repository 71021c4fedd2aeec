"""`scratchlm infer generate` (also spelled `scratchlm generate`): sample text from a trained run.

    scratchlm infer generate --run runs/quickstart --prompt "Once upon a time" --max-new-tokens 100
    scratchlm generate --run runs/quickstart --prompt "Once upon a time"      # the same verb

torch and the model are imported inside the verb only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

_GENERATE_HELP = "sample text from a trained run"


def register(subparsers) -> None:
    p = subparsers.add_parser("infer", help="inference: sample text from a trained run")
    verbs = p.add_subparsers(dest="verb", metavar="<verb>", required=True)
    _generate_arguments(verbs.add_parser("generate", help=_GENERATE_HELP))
    # The older, shorter spelling: the same arguments and function.
    _generate_arguments(subparsers.add_parser("generate", help=f"{_GENERATE_HELP} (= scratchlm infer generate)"))


def _generate_arguments(g: argparse.ArgumentParser) -> None:
    g.add_argument("--run", type=Path, required=True, help="run directory (its best, else latest checkpoint)")
    g.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    g.add_argument("--max-new-tokens", type=int, default=100)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    g.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from scratchlm.train.run import load_run

    model, tokenizer, _ = load_run(args.run, which=args.checkpoint)
    from scratchlm.model.generate import generate

    eot = tokenizer.end_of_text_id
    ids = tokenizer.encode(args.prompt) if args.prompt else [eot if eot is not None else 0]
    out = generate(
        model,
        ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_tokens=[eot] if eot is not None else (),
        max_len=max(model.config.context_length, len(ids) + args.max_new_tokens)
        if model.config.positions in ("rope", "none")
        else None,
    )
    print(args.prompt + tokenizer.decode(out[len(ids) :]))
    return 0
