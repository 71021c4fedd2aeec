"""Pruning quality points on SmolLM2-135M-Instruct, before any recovery fine-tune: bits per byte of the dense
model, 50% unstructured magnitude pruning (one global threshold / per linear), 2:4 semi-structured sparsity,
and a Minitron-style structured prune to ~70% of the parameters (scratchlm.compress).

    python -m benchmarks.prune_points                                    # ~15-25 min on 2 busy CPU cores
    python -m benchmarks.prune_points --max-bytes 20000 --rows dense,2:4 --out benchmarks/_work/prune_quick.md

Text: the first --max-bytes of ../shared/data/text/owt_mini.txt, cut at a document boundary
(<|endoftext|>), scored by `scratchlm.eval.bpb.bits_per_byte` with --context / --stride (stride = context:
lm-eval's rolling windows). Structured pruning calibrates on --calib-seqs sequences of --calib-len tokens
from the END of owt_mini, text the scored prefix does not contain.

Unstructured rows prune the Linears of the blocks only (attention q/k/v/o, MLP gate/up/down: 106M of the
135M parameters); the tied 28M-parameter embedding/head is kept dense, so "sparsity" is over the block
linears. The structured row is a new, smaller dense model; its "params" column is its real size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TEXT = Path(os.environ.get("SCRATCHLM_SHARED_DATA", REPO.parent / "shared" / "data")) / "text"
MODEL = "smollm2-135m-instruct"
EOT = "<|endoftext|>"
ROWS = ("dense", "global50", "layer50", "2:4", "structured")


def prefix(text: str, max_bytes: int) -> str:
    """The longest run of whole documents (or whole lines, without separators) within max_bytes."""
    head = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    cut = head.rfind(EOT)
    return head[:cut] if cut > 0 else head[: head.rfind("\n")]


def calibration(chat, text: str, n: int, length: int) -> torch.Tensor:
    """(n, length) token ids from the end of `text` (away from the scored prefix)."""
    from scratchlm.compress.structured import calibration_tokens

    tail = text[-n * length * 8 :]  # ~4 bytes per token: plenty
    ids = chat.tokenizer.encode(tail)
    return calibration_tokens(ids[len(ids) - n * length :] if len(ids) >= n * length else ids, n, length)


def structured(model, chat, text: str, args) -> tuple:
    from scratchlm.compress.structured import prune_structured

    calib = calibration(chat, text, args.calib_seqs, args.calib_len)
    small = prune_structured(model, calib, d_ff=args.d_ff, n_heads=args.n_heads, n_layers=args.n_layers)
    c = small.config
    what = f"structured: d_ff {c.d_ff}, {c.n_heads} heads / {c.kv_heads} kv, {c.n_layers} layers"
    return small, what


def build(row: str, text: str, args):
    """(model, description) of one row, pruned from a fresh copy of the pretrained weights."""
    from scratchlm.compress.prune import magnitude_prune, semi_structured_24
    from scratchlm.model.model_dir import load_model

    model, chat = load_model(MODEL, progress=False)
    if row == "global50":
        magnitude_prune(model, 0.5, scope="global")
        return model, chat, "50% magnitude, one global threshold"
    if row == "layer50":
        magnitude_prune(model, 0.5, scope="layer")
        return model, chat, "50% magnitude, per linear"
    if row == "2:4":
        semi_structured_24(model)
        return model, chat, "2:4 semi-structured"
    if row == "structured":
        small, what = structured(model, chat, text, args)
        return small, chat, what
    return model, chat, "dense fp32"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    p.add_argument("--max-bytes", type=int, default=200_000, help="bytes of owt_mini to score")
    p.add_argument("--tinystories-bytes", type=int, default=100_000, help="bytes of tinystories_val; 0 = skip")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--stride", type=int, default=512)
    p.add_argument("--d-ff", type=int, default=1024, help="structured: MLP width (SmolLM2: 1536)")
    p.add_argument("--n-heads", type=int, default=None, help="structured: query heads (SmolLM2: 9 over 3 KV)")
    p.add_argument("--n-layers", type=int, default=25, help="structured: layers kept (SmolLM2: 30)")
    p.add_argument("--calib-seqs", type=int, default=32)
    p.add_argument("--calib-len", type=int, default=256)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "prune_points.md")
    args = p.parse_args(argv)
    rows = args.rows.split(",")
    unknown = set(rows) - set(ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}: expected {', '.join(ROWS)}")

    from scratchlm.compress.prune import sparsity_report
    from scratchlm.eval.bpb import bits_per_byte

    owt = (TEXT / "owt_mini.txt").read_text()
    texts = {"owt_mini": prefix(owt, args.max_bytes)}
    if args.tinystories_bytes:
        texts["tinystories_val"] = prefix((TEXT / "tinystories_val.txt").read_text(), args.tinystories_bytes)
    table, dense, dense_params, facts = [], {}, None, {}
    for row in rows:
        t0 = time.perf_counter()
        model, chat, what = build(row, owt, args)
        prune_s = time.perf_counter() - t0
        params, zeros = model.num_params, sparsity_report(model)["sparsity"]
        if row == "dense":
            dense_params = params
        share = f"{100 * params / dense_params:.0f}%" if dense_params else "-"
        cells = [what, f"{params / 1e6:.1f}M ({share})", f"{100 * zeros:.1f}%"]
        score_s = 0.0
        for name, text in texts.items():
            r = bits_per_byte(model, chat, text, context=args.context, stride=args.stride)
            facts[name], score_s = r, score_s + r["seconds"]
            if row == "dense":
                dense[name] = r["bits_per_byte"]
            delta = f" ({100 * (r['bits_per_byte'] / dense[name] - 1):+.1f}%)" if name in dense else ""
            cells.append(f"{r['bits_per_byte']:.4f}{delta}")
        table.append("| " + " | ".join([*cells, f"{prune_s:.0f}", f"{score_s:.0f}"]) + " |")
        print(table[-1], flush=True)
    lines = [
        f"# Pruning points: {MODEL}, no recovery fine-tune",
        "",
        "bits per byte (change against dense) on "
        + "; ".join(
            f"the first {r['bytes']} bytes of {n} ({r['documents']} docs, {r['tokens']} tokens)"
            for n, r in facts.items()
        )  # fmt: skip
        + f"; context {args.context}, stride {args.stride}. Sparsity = zero weights over the block linears (the "
        "tied embedding/head stays dense); params = all parameters, the tied matrix once. Structured: importance "
        f"from {args.calib_seqs} x {args.calib_len} calibration tokens at the end of owt_mini, layers ranked by "
        "block importance (1 - cos of block input and output).",
        "",
        "| model | params | block-linear sparsity | "
        + " | ".join(f"{n} bits/byte" for n in texts)
        + " | prune s | score s |",
        "|" + "---|" * (5 + len(texts)),
        *table,
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads.",
        f"Rerun: `{' '.join(['python -m benchmarks.prune_points', *(sys.argv[1:] if argv is None else argv)])}`",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
