"""`scratchlm <stage> <verb>`: the command-line entry point.

Each stage registers its verbs from its own `cli.py` (`register(subparsers)`), importing heavy
dependencies only inside the verb, so `scratchlm --help` is instant. Errors the user can fix
(`ScratchLMError`) and filesystem errors (`OSError`: a read-only or full disk, a path through a file)
print one line, `scratchlm: error: <reason>`, and exit with status 1.

    scratchlm quickstart                      # the README's main job, offline
    scratchlm tokenizer train --input corpus.txt --set vocab_size=10000 --out tok/
    scratchlm tokenizer encode --tokenizer tok/ --input corpus.txt --out corpus.bin
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from scratchlm import __version__
from scratchlm.errors import ScratchLMError

# stage name -> module with `register(subparsers)`
STAGES = {
    "quickstart": "scratchlm.quickstart",
    "data": "scratchlm.data.cli",
    "tokenizer": "scratchlm.tokenizer.cli",
    "model": "scratchlm.model.cli",
    "train": "scratchlm.train.cli",
    "scaling": "scratchlm.scaling.cli",
    "infer": "scratchlm.infer.cli",  # also registers `scratchlm generate`, the older spelling of `infer generate`
    "serve": "scratchlm.serve.cli",
    "eval": "scratchlm.eval.cli",
    "compress": "scratchlm.compress.cli",
    "bench": "scratchlm.bench.cli",
    "align": "scratchlm.align.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchlm",
        description="Build language models from scratch and measure every design choice.",
    )
    parser.add_argument("--version", action="version", version=f"scratchlm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for module in STAGES.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not hasattr(args, "func"):  # a stage given without its verb
        parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
    try:
        return int(args.func(args) or 0)
    except ScratchLMError as e:
        print(f"scratchlm: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # read-only or full disk, a path through a file, ...: one line naming the path
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        print(f"scratchlm: error: {e.strerror or e}{': ' + where if where else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scratchlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
