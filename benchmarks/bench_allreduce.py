"""All-reduce bandwidth over message sizes and process counts: gloo on CPU, NCCL on GPUs.

    python -m benchmarks.bench_allreduce                      # CPU: gloo, 2..4 processes, 1..256 MB
    python -m benchmarks.bench_allreduce --quick              # smoke test: 2 processes, 1 and 4 MB
    python -m benchmarks.bench_allreduce --nprocs 2,4,8 --sizes-mb 1,4,16,64,256,1024   # NCCL, one node

Each (processes, size) cell is `scratchlm bench allreduce` (`run_allreduce_bench`): fresh processes,
one checked all-reduce, warmup, then timed iterations between barriers; an iteration's time is the
slowest rank's, the table shows the median. algbw = size / time; busbw = algbw x 2 (n - 1) / n
(nccl-tests' definition: comparable to the link bandwidth whatever n is). On CPU the sizes stop at
256 MB by default: n processes each hold the buffer plus gloo's working copies on a machine whose
RAM is shared with other jobs (1 GB x 4 ranks would need several GiB).
Results: benchmarks/results/allreduce.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

from benchmarks.common import RESULTS, markdown_table, save_report
from scratchlm.bench.collectives import AllReduceConfig, parse_sizes, run_allreduce_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpus = torch.cuda.device_count()
    ap.add_argument("--nprocs", default=None, help="process counts (default: 2,3,4 on CPU; 2..GPUs with NCCL)")
    ap.add_argument("--sizes-mb", default=None, help="MB per message (default 1,4,16,64,256; up to 1024 with NCCL)")
    ap.add_argument("--backend", choices=("gloo", "nccl"), default="nccl" if gpus >= 2 else "gloo")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per cell (default 5 on CPU, 20 NCCL)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="allreduce", help="results file stem in benchmarks/results")
    args = ap.parse_args()
    nccl = args.backend == "nccl"
    nprocs = [
        int(n) for n in (args.nprocs or (",".join(str(n) for n in range(2, gpus + 1)) if nccl else "2,3,4")).split(",")
    ]
    sizes = parse_sizes(args.sizes_mb or ("1,4,16,64,256,1024" if nccl else "1,4,16,64,256"))
    iters = args.iters or (20 if nccl else 5)
    if args.quick:
        nprocs, sizes, iters = [2], [1.0, 4.0], 3

    results = []
    for n in nprocs:
        print(f"{n} processes ...", file=sys.stderr, flush=True)
        cfg = AllReduceConfig(nproc=n, sizes_mb=sizes, backend=args.backend, warmup=args.warmup, iters=iters)
        results.append(run_allreduce_bench(cfg))

    header = ["processes", "size (MB)", "median ms", "min ms", "algbw GB/s", "busbw GB/s"]
    rows = [
        [r["world"], f"{row['size_mb']:g}", f"{1e3 * row['median_s']:.2f}", f"{1e3 * row['min_s']:.2f}",
         f"{row['algbw_gbps']:.3f}", f"{row['busbw_gbps']:.3f}"]
        for r in results
        for row in r["rows"]
    ]  # fmt: skip
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m benchmarks.bench_allreduce " + " ".join(sys.argv[1:])
    load = os.getloadavg()
    md = "\n".join(
        [
            f"# All-reduce bandwidth ({args.backend})",
            "",
            f"- {date}; {results[0]['device']}; torch {torch.__version__}; float32; {args.warmup} warmup +"
            f" {iters} timed iterations per cell, median of the slowest rank's time",
            f"- load average at the end {load[0]:.1f}: the CPU is shared with other jobs, so these are a floor"
            if not nccl
            else "- NCCL, one node",
            "- algbw = size / time; busbw = algbw x 2 (n - 1) / n (nccl-tests); MB and GB are 10^6 and 10^9 bytes",
            f"- rerun: `{command}`",
            "",
            markdown_table(header, rows),
            "",
        ]
    )
    save_report(RESULTS, args.out, md, {"date": date, "command": command, "results": results})


if __name__ == "__main__":
    main()
