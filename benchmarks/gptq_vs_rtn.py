"""GPTQ against round to nearest (RTN) at int4 on SmolLM2-135M-Instruct: bits per byte of the same model
quantised both ways (scratchlm.compress), on owt_mini and tinystories_val, side by side with fp32.

    PYTHONPATH=. nice python -m benchmarks.gptq_vs_rtn                       # ~30-60 min on 2 busy CPU cores
    PYTHONPATH=. python -m benchmarks.gptq_vs_rtn --rows fp32,rtn-g64,gptq-g64 --calib-seqs 32 --out /tmp/g.md

Rows: fp32 (the pulled model: SmolLM2's shipped Q4_1 file dequantised, see bench_compress.py), rtn-gG
(int4 round to nearest, group G) and gptq-gG / gptq-gG-ao (GPTQ, without / with act_order). Every quantised
row quantises the block linears only, on the same asymmetric int4 grid. GPTQ calibrates on --calib-seqs
windows of --calib-len tokens at random (seeded) offsets in owt_mini from byte --calib-from on, so it
never sees the scored text (the first --max-bytes of owt_mini) nor tinystories, whose style it never saw.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks.bench_compress import REPO
from benchmarks.common import save_report
from benchmarks.prune_points import MODEL, TEXT, calibration, prefix


def calibration_windows(chat, text: str, n: int, length: int, seed: int = 0) -> torch.Tensor:
    """(n, length) token windows at random offsets in `text` (GPTQ's recipe: random C4 windows)."""
    ids = torch.tensor(chat.tokenizer.encode(text[: n * length * 12]))  # ~4.5 bytes per token: room to spread
    if len(ids) < n * length:
        raise SystemExit(f"calibration text has {len(ids)} tokens, fewer than {n} x {length}")
    starts = torch.randperm(len(ids) - length, generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([ids[s : s + length] for s in starts.tolist()])  # (n, length)


def build(row: str, calib, damp: float):
    from scratchlm.compress.quant import QuantConfig, quantize_model
    from scratchlm.model.model_dir import load_model

    model, chat = load_model(MODEL, progress=False)
    if row == "fp32":
        return model, chat
    method, g, *flags = row.split("-")
    cfg = QuantConfig(bits=4, group_size=int(g[1:]), method=method, damp=damp, act_order="ao" in flags)
    return quantize_model(model, cfg, calib=calib if method == "gptq" else None), chat


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="fp32,rtn-g64,gptq-g64,gptq-g64-ao,rtn-g32,gptq-g32-ao")
    p.add_argument("--max-bytes", type=int, default=60_000, help="bytes of owt_mini to score")
    p.add_argument("--tinystories-bytes", type=int, default=30_000)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--calib-seqs", type=int, default=128)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--calib-from", type=int, default=1_000_000, help="byte of owt_mini where calibration text starts")
    p.add_argument(
        "--calib-tail", action="store_true", help="bench_compress's calibration: the last tokens of owt_mini"
    )
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1, help="torch threads: 1 on a busy machine (OpenMP waits)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gptq.md")
    args = p.parse_args(argv)
    if args.calib_from < args.max_bytes:
        p.error("--calib-from must be past the scored --max-bytes of owt_mini")
    torch.set_num_threads(args.threads)
    from scratchlm.eval.bpb import bits_per_byte

    owt = (TEXT / "owt_mini.txt").read_text()
    texts = {"owt_mini": prefix(owt, args.max_bytes)}
    if args.tinystories_bytes:
        texts["tinystories_val"] = prefix((TEXT / "tinystories_val.txt").read_text(), args.tinystories_bytes)
    calib = None
    table, base, facts, records = [], {}, {}, []
    for row in args.rows.split(","):
        if row.startswith("gptq") and calib is None:
            from scratchlm.model.model_dir import load_model

            _, chat = load_model(MODEL, progress=False)
            if args.calib_tail:  # consecutive windows of the last few documents (bench_compress.py's GPTQ row)
                calib = calibration(chat, owt, args.calib_seqs, args.calib_len)
            else:
                calib = calibration_windows(chat, owt[args.calib_from :], args.calib_seqs, args.calib_len)
        t0 = time.perf_counter()
        model, chat = build(row, calib, args.damp)
        build_s = time.perf_counter() - t0
        cells, bpb = [row], {}
        for name, text in texts.items():
            r = bits_per_byte(model, chat, text, context=args.context, stride=args.context)
            facts[name], bpb[name] = r, r["bits_per_byte"]
            base.setdefault(name, r["bits_per_byte"])  # the first row is the baseline
            cells.append(f"{r['bits_per_byte']:.4f} ({100 * (r['bits_per_byte'] / base[name] - 1):+.2f}%)")
        cells.append(f"{build_s:.0f}")
        table.append("| " + " | ".join(cells) + " |")
        print(table[-1], flush=True)
        records.append({"row": row, "bits_per_byte": bpb, "build_s": build_s})
        del model
    first = args.rows.split(",")[0]
    lines = [
        f"# int4 GPTQ against round to nearest: {MODEL} (CPU)",
        "",
        "bits per byte (change against the first row) on "
        + "; ".join(f"the first {r['bytes']} bytes of {n} ({r['tokens']} tokens)" for n, r in facts.items())
        + f"; context = stride = {args.context}. GPTQ: {args.calib_seqs} x {args.calib_len} calibration tokens "
        + (
            "(the last tokens of owt_mini)"
            if args.calib_tail
            else f"(random windows of owt_mini from byte {args.calib_from})"
        )
        + f", damp {args.damp}, blocks quantised in "
        "order on the outputs of the already quantised blocks; `-ao` = act_order (static groups). Quantised "
        f"rows: the block linears, int4 asymmetric groups; the tied embedding / head stay fp32. vs {first}: "
        "the first row.",
        "",
        "| model | " + " | ".join(f"{n} bits/byte" for n in texts) + " | build s |",
        "|" + "---|" * (2 + len(texts)),
        *table,
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads.",
        f"Rerun: `PYTHONPATH=. python -m benchmarks.gptq_vs_rtn {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
    ]
    raw = {"model": MODEL, "args": {k: str(v) for k, v in vars(args).items()}, "rows": records}
    save_report(args.out.parent, args.out.stem, "\n".join(lines), raw)


if __name__ == "__main__":
    main()
