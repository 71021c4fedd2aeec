"""Batch-1 decode of SmolLM2 fp32 against its int8 / int4 copies, interleaved in one process (CPU, engine).

    PYTHONPATH=. python -m benchmarks.quant_decode_ab            # ~4 min on 2 quiet cores
    PYTHONPATH=. python -m benchmarks.quant_decode_ab --rounds 2 --tokens 8 --out /tmp/ab.md   # smoke run

compress_table.md measures each row in its own process minutes apart; on this shared 2-core VM identical
work then varies by up to ~1.5x between rows. Here every model is loaded once and the rounds go fp32, int8,
int8 + head, int4-g64, fp32, ... so a slow minute hits every row alike; the table gives each row's median
and its ratio to fp32's median, at the torch thread counts asked (the quantised kernels run on one thread,
`kernels/quant_gemv.py`). Results: benchmarks/results/quant_decode_ab.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.bench_compress import build, decode_tps
from benchmarks.common import RESULTS, markdown_table, save_report
from benchmarks.quality_common import machine_line

ROWS = ("fp32", "int8", "int8+head", "int4-g64")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=32, help="new tokens per timed generation")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch thread counts (one table each)")
    p.add_argument("--out", type=Path, default=RESULTS / "quant_decode_ab.md")
    args = p.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    models = {row: build(row, "", argparse.Namespace()) for row in ROWS}
    runs = {(th, row): [] for th in args.threads for row in ROWS}
    with torch.inference_mode():
        for th in args.threads:
            torch.set_num_threads(th)
            for _ in range(args.rounds):
                for row in ROWS:
                    runs[th, row].append(decode_tps(*models[row], args.tokens, 1))
    body = []
    for th in args.threads:
        base = statistics.median(runs[th, "fp32"])
        for row in ROWS:
            med = statistics.median(runs[th, row])
            spread = f"{min(runs[th, row]):.1f}-{max(runs[th, row]):.1f}"
            body.append([th, row, f"{med:.1f}", spread, f"{med / base:.2f}x"])
    md = "\n".join([
        "# Quantised decode against fp32, interleaved in one process (SmolLM2-135M-Instruct, CPU, engine, batch 1)",
        "",
        f"- {machine_line()}; torch {torch.__version__}; load average {load0:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - t0:.0f} s in all",
        f"- greedy, {args.tokens} new tokens after one chat prompt (bench_compress.decode_tps: the prompt's prefill "
        f"is in the time), {args.rounds} interleaved rounds per row; int8+head also quantises the output head",
        f"- rerun: `PYTHONPATH=. python -m benchmarks.quant_decode_ab {' '.join(given)}`",
        "",
        markdown_table(["torch threads", "model", "median tok/s", "range", "vs fp32"], body),
        "",
    ])  # fmt: skip
    raw = {"args": vars(args) | {"out": str(args.out)}, "runs": {f"{th}/{row}": v for (th, row), v in runs.items()}}
    save_report(args.out.parent, args.out.stem, md, raw)


if __name__ == "__main__":
    main()
