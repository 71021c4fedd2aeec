"""The model-size table of the CS336 systems assignment: forward and forward+backward step times,
fp32 against bf16 autocast, with MFU against a matmul peak measured in the same run.

    python -m benchmarks.bench_model_sizes                 # CPU: small + medium, batch 1, context 128
    python -m benchmarks.bench_model_sizes --quick         # smoke test: small, fwd only, 1 step
    python -m benchmarks.bench_model_sizes --sizes small,medium,large,xl,2.7b --contexts 128,256,512,1024 \
        --batch 4 --device cuda                            # the whole table on a GPU

Sizes (d_model / layers / heads; d_ff 4 d, vocab 10,000): small 768/12/12, medium 1024/24/16,
large 1280/36/20, xl 1600/48/25, 2.7b 2560/32/32 (`scratchlm.bench.model.CS336_SIZES`). Every cell is
`scratchlm bench model` (`run_model_bench`) in this process: warmup steps, then timed steps with the
device synchronised around each; the table reports the median step (the CPU here is shared with other
jobs, so the median is the robust figure) and the std over steps. A size that runs out of memory is
recorded as such and the sweep goes on.
Results: benchmarks/results/model_sizes.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

from benchmarks.common import RESULTS, markdown_table, save_report
from scratchlm.bench.model import CS336_SIZES, ModelBenchConfig, run_model_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="CS336 sizes, a,b (default: all on CUDA, small,medium on CPU)")
    ap.add_argument("--contexts", default=None, help="sequence lengths (default 128,256,512,1024 on CUDA, 128 on CPU)")
    ap.add_argument("--batch", type=int, default=None, help="default 4 on CUDA, 1 on CPU")
    ap.add_argument("--modes", default="fwd,fwd_bwd")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--warmup", type=int, default=None, help="default 3 on CUDA, 1 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="default 10 on CUDA, 3 on CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small, fwd, fp32, 1 step: a smoke test")
    ap.add_argument("--out", default="model_sizes", help="results file stem in benchmarks/results")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the markdown of a saved results file")
    args = ap.parse_args()
    if args.render:
        raw = json.loads(Path(args.render).read_text())
        save_report(RESULTS, args.out, render(raw), raw)
        return
    cuda = args.device.startswith("cuda")
    sizes = (args.sizes or (",".join(CS336_SIZES) if cuda else "small,medium")).split(",")
    contexts = [int(t) for t in (args.contexts or ("128,256,512,1024" if cuda else "128")).split(",")]
    batch = args.batch or (4 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    steps = args.steps or (10 if cuda else 3)
    modes, precisions = args.modes.split(","), args.precisions.split(",")
    if args.quick:
        sizes, contexts, modes, precisions, warmup, steps = ["small"], [contexts[0]], ["fwd"], ["fp32"], 0, 1

    records = []
    for size in sizes:
        for T in contexts:
            for precision in precisions:
                for mode in modes:
                    cfg = ModelBenchConfig(
                        preset=size, batch=batch, seq_len=T, mode=mode, warmup=warmup, steps=steps,
                        precision=precision, compile=args.compile, device=args.device,
                    )  # fmt: skip
                    print(f"{size} T={T} {precision} {mode} ...", file=sys.stderr, flush=True)
                    try:
                        r = run_model_bench(cfg, log=lambda *a: None)
                    except torch.OutOfMemoryError:
                        records.append(dict(size=size, seq_len=T, precision=precision, mode=mode, oom=True))
                        torch.cuda.empty_cache()
                        continue
                    rec = dict(
                        size=size, seq_len=T, precision=precision, mode=mode, params=r["model"]["params"],
                        median_ms=1e3 * r["step_s"]["median"], std_ms=1e3 * r["step_s"]["std"],
                        mean_ms=1e3 * r["step_s"]["mean"], tokens_per_s=r["tokens_per_s"],
                        flops_per_step=r["flops_per_step"], achieved_tflops=r["achieved_flops"] / 1e12,
                        peak_tflops=r["peak_flops"] / 1e12, mfu=r["mfu"], memory=r["memory"],
                        phases_ms={k: 1e3 * v["median"] for k, v in r["phases_s"].items()},
                    )  # fmt: skip
                    records.append(rec)
                    print(
                        f"  median {rec['median_ms']:.1f} ms, std {rec['std_ms']:.1f} ms, MFU {100 * rec['mfu']:.1f}%",
                        file=sys.stderr,
                        flush=True,
                    )

    device_name = torch.cuda.get_device_name(0) if cuda else f"{platform.processor() or platform.machine()} CPU"
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m benchmarks.bench_model_sizes " + " ".join(sys.argv[1:])
    raw = dict(date=date, device=device_name, cuda=cuda, torch=torch.__version__, threads=torch.get_num_threads())
    raw.update(batch=batch, warmup=warmup, steps=steps, cpu_count=os.cpu_count(), command=command)
    raw.update(loadavg_at_end=os.getloadavg()[0], records=records)
    save_report(RESULTS, args.out, render(raw), raw)


def render(raw: dict) -> str:
    """The markdown report of a results dict (also `--render FILE.json`, to redo the table of a saved run)."""
    cuda = raw.get("cuda", False)
    unit, scale = ("TFLOP/s", 1.0) if cuda else ("GFLOP/s", 1e3)
    header = ["size", "params", "T", "precision", "mode", "median ms", "std ms", "tokens/s", unit, f"peak {unit}"]
    header.append("MFU")
    rows = []
    for r in raw["records"]:
        if r.get("oom"):
            rows.append([r["size"], "", r["seq_len"], r["precision"], r["mode"], "OOM", "", "", "", "", ""])
            continue
        rows.append(
            [
                r["size"], f"{r['params'] / 1e6:.0f}M", r["seq_len"], r["precision"], r["mode"],
                f"{r['median_ms']:.1f}", f"{r['std_ms']:.1f}", f"{r['tokens_per_s']:.0f}",
                f"{scale * r['achieved_tflops']:.1f}", f"{scale * r['peak_tflops']:.1f}", f"{100 * r['mfu']:.1f}%",
            ]
        )  # fmt: skip
    load = f", load average {raw['loadavg_at_end']:.1f} at the end" if "loadavg_at_end" in raw else ""
    shared = f"; CPU shared with other jobs{load}: medians, std shows the noise" if not cuda else ""
    return "\n".join(
        [
            "# CS336 model sizes: forward and forward+backward, fp32 vs bf16 autocast",
            "",
            f"- {raw['date']}; device {raw['device']}; torch {raw['torch']}, {raw['threads']} threads;"
            f" batch {raw['batch']}; {raw['warmup']} warmup + {raw['steps']} timed steps per cell{shared}",
            "- model: pre-norm RMSNorm, RoPE, SwiGLU with d_ff = 4 d_model, untied head, vocab 10,000"
            " (so parameter counts exceed the size names, e.g. small 129M).",
            "- fwd: forward under no_grad; fwd_bwd: forward + cross-entropy + backward. FLOPs: the model's causal"
            " count (`flops_per_token`), backward = 2x forward. MFU = FLOPs / median step / peak, the peak a"
            " matmul (n = 2048 on CPU, 8192 on CUDA) measured in the same run in the precision the matmuls run in.",
            f"- rerun: `{raw.get('command', 'python -m benchmarks.bench_model_sizes')}`",
            "",
            markdown_table(header, rows),
            "",
        ]
    )


if __name__ == "__main__":
    main()
