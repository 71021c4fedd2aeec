"""The quantised CPU kernel alone on SmolLM2's 210 block matrices: weight read rate, and kernel vs dequantise + GEMM.

    PYTHONPATH=. python -m benchmarks.quant_gemv_rows                 # ~2 min on 2 quiet cores
    PYTHONPATH=. python -m benchmarks.quant_gemv_rows --layers 2 --out /tmp/g.md   # a smoke run

Random weights in SmolLM2-135M's shapes (per layer q, k, v, o 576 wide, gate / up 576 -> 1536, down
1536 -> 576; 30 layers = 106 MB of int8, more than the caches), called one after another as a decode step
does. Table 1: ms per pass over all matrices at 1 row and the int8 bytes read per second, 1 and 2 kernel
threads. Table 2: the kernel (passes of 8 rows over cached blocks of weights) against the reference path it
replaces for more rows (dequantise the matrix, then F.linear on torch's 2 threads), the kernel on one: where MAX_ROWS in
kernels/quant_gemv.py comes from. Results: benchmarks/results/quant_gemv_rows.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, markdown_table, save_report
from benchmarks.quality_common import machine_line
from scratchlm.compress.quant import Int4Linear, Int8Linear
from scratchlm.kernels.quant_gemv import MAX_ROWS, BoundGemv

LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]  # (out, in)


def bound(m) -> BoundGemv:
    return BoundGemv(m.bits, m.qweight, m.scale, m.zero if m.bits == 4 else None, getattr(m, "group_size", 0))


def median_ms(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--rows", type=int, nargs="+", default=[8, 16, 32, 48], help=f"each at most {MAX_ROWS}")
    p.add_argument("--out", type=Path, default=RESULTS / "quant_gemv_rows.md")
    args = p.parse_args(argv)
    if not all(1 <= r <= MAX_ROWS for r in args.rows):
        p.error(f"--rows must be in 1..{MAX_ROWS} (more rows never reach the kernel)")
    given = sys.argv[1:] if argv is None else argv
    torch.manual_seed(0)
    torch.set_num_threads(2)  # the reference's GEMM and dequantise use torch's threads, as in a decode step
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    shapes = LAYER * args.layers
    mods = {8: [Int8Linear.from_weight(torch.randn(n, k)) for n, k in shapes],
            4: [Int4Linear.from_weight(torch.randn(n, k), 64) for n, k in shapes]}  # fmt: skip
    kernels = {b: [bound(m) for m in ms] for b, ms in mods.items()}
    int8_bytes = sum(n * k for n, k in shapes)
    read, versus, raw = [], [], {"read": {}, "rows": {}}
    with torch.inference_mode():
        for threads in (1, 2):
            x = {576: torch.randn(1, 576), 1536: torch.randn(1, 1536)}
            for bits in (8, 4):
                ms = median_ms(lambda: [g(x[g.k], threads) for g in kernels[bits]], args.repeats)  # noqa: B023
                gbs = int8_bytes / ms / 1e6
                read.append([threads, f"int{bits}" + ("" if bits == 8 else " g64"), f"{ms:.2f}",
                             f"{gbs:.1f}" if bits == 8 else "-"])  # fmt: skip
                raw["read"][f"{threads}/{bits}"] = ms
        for bits in (8, 4):
            for rows in args.rows:
                x = {576: torch.randn(rows, 576), 1536: torch.randn(rows, 1536)}
                ref = median_ms(lambda: [F.linear(x[m.in_features], m.dequantize()) for m in mods[bits]], 3)  # noqa: B023
                ker = median_ms(lambda: [g(x[g.k], 1) for g in kernels[bits]], 3)  # noqa: B023
                versus.append([f"int{bits}" + ("" if bits == 8 else " g64"), rows, f"{ker:.1f}", f"{ref:.1f}",
                               f"{ref / ker:.2f}x"])  # fmt: skip
                raw["rows"][f"{bits}/{rows}"] = {"kernel_ms": ker, "dequantise_gemm_ms": ref}
    md = "\n".join([
        f"# The quantised CPU kernel on SmolLM2's block matrices ({args.layers} layers x 7, random weights)",
        "",
        f"- {machine_line()}; torch {torch.__version__}; load average {load0:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - t0:.0f} s in all",
        f"- rerun: `PYTHONPATH=. python -m benchmarks.quant_gemv_rows {' '.join(given)}`",
        "",
        f"One row (a decode step), every matrix once, median of {args.repeats}; GB/s = int8 bytes read per second:",
        "",
        markdown_table(["kernel threads", "weights", "ms", "int8 GB/s"], read),
        "",
        "More rows: the kernel (one thread) against dequantise + F.linear (2 torch threads; the path beyond MAX_ROWS):",
        "",
        markdown_table(["weights", "rows", "kernel ms", "dequantise + GEMM ms", "kernel faster by"], versus),
        "",
    ])  # fmt: skip
    save_report(args.out.parent, args.out.stem, md, {"args": vars(args) | {"out": str(args.out)}, **raw})


if __name__ == "__main__":
    main()
