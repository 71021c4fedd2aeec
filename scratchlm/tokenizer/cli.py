"""`scratchlm tokenizer train|encode|decode|show|info`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scratchlm.config import add_config_arguments, config_from_args, to_toml


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="byte-level BPE: train, encode, decode", description=__doc__)
    verbs = p.add_subparsers(dest="verb", metavar="<verb>", required=True)

    t = verbs.add_parser("train", help="train a BPE tokenizer and write a tokenizer directory")
    add_config_arguments(t, "tokenizer")
    t.add_argument("--input", help="corpus text file (default: the embedded default corpus)")
    t.add_argument("--vocab-size", type=int, help="shortcut for --set vocab_size=N")
    t.add_argument("--workers", type=int, help="shortcut for --set num_workers=N")
    t.add_argument("--out", required=False, type=Path, help="tokenizer directory to write")
    t.add_argument("--force", action="store_true", help="replace an existing --out directory")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    e = verbs.add_parser("encode", help="encode a corpus into a token file (+ JSON sidecar) for training")
    e.add_argument("--tokenizer", required=True, type=Path, help="tokenizer directory or file")
    e.add_argument("--input", required=True, type=Path, help="corpus text file")
    e.add_argument("--out", required=True, type=Path, help="token file to write (sidecar: <out>.json)")
    e.add_argument("--workers", type=int, default=0, help="encoding processes (0 = one per core)")
    e.add_argument(
        "--chunk-mb", type=float, default=1.0, help="MiB of text per work item (bounds memory, not the result)"
    )
    e.add_argument("--force", action="store_true", help="replace an existing output file")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_encode)

    d = verbs.add_parser("decode", help="decode token ids (given, or read from a token file) to text")
    d.add_argument("--tokenizer", required=True, type=Path)
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--ids", help="comma-separated ids")
    src.add_argument("--input", type=Path, help="token file written by `tokenizer encode`")
    d.add_argument("--offset", type=int, default=0, help="first token (with --input)")
    d.add_argument("--count", type=int, default=200, help="tokens to decode (with --input)")
    d.set_defaults(func=cmd_decode)

    s = verbs.add_parser("show", help="show how a text is split into tokens")
    s.add_argument("--tokenizer", required=True, type=Path)
    s.add_argument("text", help="text to tokenize")
    s.set_defaults(func=cmd_show)

    i = verbs.add_parser("info", help="vocab size, merges, special tokens, hash, longest tokens")
    i.add_argument("tokenizer", type=Path)
    i.set_defaults(func=cmd_info)


def cmd_train(args: argparse.Namespace) -> int:
    from scratchlm.errors import ScratchLMError
    from scratchlm.tokenizer.config import TokenizerTrainConfig

    cfg = config_from_args(
        TokenizerTrainConfig,
        "tokenizer",
        args,
        {"input": args.input, "vocab_size": args.vocab_size, "num_workers": args.workers},
    )
    if args.print_config:
        print(to_toml(cfg), end="")
        return 0
    if args.out is None:
        raise ScratchLMError("tokenizer train needs --out DIR (the tokenizer directory to write)")
    train_tokenizer(cfg, args.out, overwrite=args.force, progress=not args.quiet)
    return 0


def train_tokenizer(cfg, out: Path, overwrite: bool = False, progress: bool = True):
    """Train per `cfg` and write the tokenizer directory `out`; returns the Tokenizer."""
    import os

    from scratchlm.config import to_dict
    from scratchlm.errors import ScratchLMError
    from scratchlm.io import check_writable
    from scratchlm.tokenizer import Tokenizer, save_tokenizer, train_bpe

    if out.exists() and not overwrite:  # fail before the work, not after
        raise ScratchLMError(f"{out} already exists (pass --force to replace it)")
    check_writable(out, "tokenizer directory")  # a read-only or impossible location: say so before training
    corpus = Path(cfg.input) if cfg.input else _default_train_corpus(progress)
    t0 = time.perf_counter()
    vocab, merges = train_bpe(
        corpus,
        cfg.vocab_size,
        cfg.special_tokens,
        num_workers=cfg.num_workers or None,
        chunk_bytes=int(cfg.chunk_mb * (1 << 20)),
        pattern=cfg.pattern,
        progress=progress,
        backend=cfg.backend,
    )
    seconds = time.perf_counter() - t0
    tok = Tokenizer(vocab, merges, cfg.special_tokens, cfg.pattern)
    meta = {
        "config": to_dict(cfg),
        "corpus": str(corpus.resolve()),
        "corpus_bytes": os.path.getsize(corpus),
        "train_seconds": round(seconds, 3),
    }
    save_tokenizer(tok, out, cfg.formats, overwrite=overwrite, meta=meta)
    print(f"trained {tok.vocab_size:,}-token BPE on {corpus} ({meta['corpus_bytes'] / 1e6:.1f} MB) in {seconds:.1f} s")
    print(f"wrote {out}/ (hash {tok.hash[:12]})")
    return tok


def _default_train_corpus(progress: bool) -> Path:
    from scratchlm.data.default_corpus import ensure_default_corpus

    return Path(ensure_default_corpus(progress=progress).train)


def cmd_encode(args: argparse.Namespace) -> int:
    from scratchlm.tokenizer import load_tokenizer
    from scratchlm.tokenizer.encode_corpus import encode_file

    tok = load_tokenizer(args.tokenizer)
    meta = encode_file(
        tok,
        args.input,
        args.out,
        num_workers=args.workers or None,
        chunk_bytes=int(args.chunk_mb * (1 << 20)),
        progress=not args.quiet,
        overwrite=args.force,
        tokenizer_source=str(args.tokenizer.resolve()),
    )
    mbps = meta["source_bytes"] / 1e6 / max(meta["seconds"], 1e-9)
    print(
        f"{meta['count']:,} tokens ({meta['dtype']}, {meta['documents']:,} documents, "
        f"{meta['bytes_per_token']:.2f} bytes/token) in {meta['seconds']:.1f} s ({mbps:.1f} MB/s) -> {args.out}"
    )
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from scratchlm.errors import ScratchLMError
    from scratchlm.tokenizer import load_tokenizer
    from scratchlm.tokenizer.token_file import open_tokens

    tok = load_tokenizer(args.tokenizer)
    if args.ids is not None:
        try:
            ids = [int(x) for x in args.ids.replace(" ", "").split(",") if x]
        except ValueError:
            raise ScratchLMError(f"--ids must be comma-separated integers, got {args.ids!r}") from None
    else:
        data, _ = open_tokens(args.input, expect_tokenizer_hash=tok.hash)
        if args.offset < 0 or args.count < 0:
            raise ScratchLMError(f"--offset and --count must be >= 0, got {args.offset} and {args.count}")
        ids = data[args.offset : args.offset + args.count].tolist()
    print(tok.decode(ids))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from scratchlm.config import text_argument
    from scratchlm.tokenizer import load_tokenizer

    text_argument(args.text, "the text to show")
    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.text)
    pieces = [tok.vocab[i].decode("utf-8", errors="replace") for i in ids]
    print(f"{len(ids)} tokens, {len(args.text.encode()) / max(len(ids), 1):.2f} bytes/token")
    print(" | ".join(f"{p!r}:{i}" for p, i in zip(pieces, ids)))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from scratchlm.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    longest = sorted(tok.vocab.values(), key=len, reverse=True)[:10]
    print(f"vocab size     {tok.vocab_size:,}")
    print(f"merges         {len(tok.merges):,}")
    print(f"special tokens {tok.special_tokens}")
    print(f"hash           {tok.hash}")
    print("longest tokens " + ", ".join(repr(b.decode("utf-8", errors="replace")) for b in longest))
    return 0
