"""Attention benchmarks: the FlashAttention-2 Triton kernels against torch SDPA and naive attention on a
GPU; the tiled PyTorch reference against naive attention (memory and time as T grows) on CPU.

    python -m benchmarks.bench_attention               # GPU: needs CUDA + triton (exits with a message otherwise)
    python -m benchmarks.bench_attention --quick       # GPU smoke test (a few shapes)
    python -m benchmarks.bench_attention --cpu         # CPU: reference vs naive, T = 1k..16k (~5 minutes)
    python -m benchmarks.bench_attention --cpu --quick # CPU smoke test (T = 256, 512)

GPU (-> results/attention_gpu.{md,json}): `triton.testing.do_bench` medians of forward, backward and
forward + backward, causal, B=1, H=16, T = 128 .. 65,536, Dh = 16 .. 128, bf16 and fp32, for the
scratchlm Triton kernels, torch SDPA with the flash backend (bf16 only: it has no fp32 kernel; fp32
rows use SDPA's memory-efficient backend) and naive PyTorch attention (skipped where its T x T
matrices would not fit). Achieved TFLOP/s (causal: half the 4 B H T^2 Dh forward matmul FLOPs,
backward 2.5x the forward) against the bf16 matmul peak measured on the same device. Then the CS336
leaderboard setting: B=1, T=16,384, d_model 1024 (16 heads, Dh 64), bf16, causal, forward + backward.
Every implementation is checked against SDPA at a small shape before it is timed.

CPU (-> results/attention_cpu.{md,json}): causal, B=1, H=1, Dh=64, fp32, one thread, forward and
backward (fastest of 3 runs) of `attention(backend="reference")` (tiled FlashAttention-2 in PyTorch,
128 x 128 tiles) and `backend="naive"` (full T x T scores), each (implementation, T) in a fresh
subprocess. Memory: the
process's peak RSS during forward + backward (the kernel's exact high-water mark VmHWM, reset just
before the forward through /proc/self/clear_refs; not a sample) minus its RSS at that moment: what
forward + backward added on top of the inputs and libraries.
The worker also reports the bytes the T x T matrices need in theory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, WORK, cpu_model, markdown_table, run_measured, save_report, write_result

MB = 2**20
CS336 = dict(B=1, T=16_384, H=16, Dh=64)  # d_model 1024; naive ~80 ms, best student 5.36 ms on an H100 (bf16)


def _info(device: str) -> dict:
    import torch

    return dict(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        device=device,
        python=platform.python_version(),
        torch=torch.__version__,
        triton=_triton_version(),
        loadavg_start=os.getloadavg(),
    )


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "not installed"


# ------------------------------------------------------------------------------------------------ CPU
def cpu_worker(spec: dict) -> None:
    """One (implementation, T): time and memory of a forward and a backward, in this fresh process."""
    import torch

    from scratchlm.kernels import attention

    torch.set_num_threads(1)  # a shared 2-core machine: two threads contending for it are slower than one
    T, H, Dh, impl = spec["T"], spec["H"], spec["Dh"], spec["impl"]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, H, T, Dh, generator=g).requires_grad_() for _ in range(3))
    do = torch.randn(1, H, T, Dh, generator=g)
    for _ in range(2):  # warm-up at T=256: the first forward / backward of a process pay one-off costs
        small = [t[:, :, :256].detach().clone().requires_grad_() for t in (q, k, v)]
        attention(*small, causal=True, backend=impl).backward(do[:, :, :256])
    fwd, bwd = [], []
    for i in range(spec["repeats"]):  # memory from the first run; times: the fastest run (least disturbed)
        rss_before = reset_peak_rss()
        t0 = time.perf_counter()
        o = attention(q, k, v, causal=True, backend=impl)
        t1 = time.perf_counter()
        o.backward(do)
        t2 = time.perf_counter()
        if i == 0:
            peak_added = peak_rss() - rss_before
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
        del o
        q.grad = k.grad = v.grad = None
    write_result(
        spec,
        dict(
            impl=impl,
            T=T,
            repeats=spec["repeats"],
            fwd_s=min(fwd),
            bwd_s=min(bwd),
            fwd_all_s=fwd,
            bwd_all_s=bwd,
            peak_added_mb=peak_added / MB,
            scores_matrix_mb=H * T * T * 4 / MB,  # one fp32 (H, T, T) matrix
            t_end=time.time(),
        ),
    )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss() -> int:
    """The process's peak RSS in bytes since start or the last `reset_peak_rss()` (Linux VmHWM)."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0); return that RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def run_cpu(args) -> None:
    lengths = [256, 512] if args.quick else [1024, 2048, 4096, 8192, 16384]
    H, Dh = 1, 64
    rows = []
    for T in lengths:
        for impl in ("reference", "naive"):
            spec = dict(mode="cpu", T=T, H=H, Dh=Dh, impl=impl, repeats=1 if args.quick else 3)
            r = run_measured("benchmarks.bench_attention", spec, env={"OMP_NUM_THREADS": "1"})
            rows.append(r)
            print(
                f"T={T:6d} {impl:9s} fwd {r['fwd_s']:.3f} s bwd {r['bwd_s']:.3f} s"
                f" peak added {r['peak_added_mb']:.0f} MiB",
                flush=True,
            )
    info = _info("CPU: " + cpu_model() + f", {os.cpu_count()} cores, 1 thread used")
    info["loadavg_end"] = os.getloadavg()
    table = []
    for T in lengths:
        ref = next(r for r in rows if r["T"] == T and r["impl"] == "reference")
        nai = next(r for r in rows if r["T"] == T and r["impl"] == "naive")
        table.append(
            [
                T,
                ref["peak_added_mb"],
                nai["peak_added_mb"],
                ref["scores_matrix_mb"],
                ref["fwd_s"],
                ref["bwd_s"],
                nai["fwd_s"],
                nai["bwd_s"],
                (nai["fwd_s"] + nai["bwd_s"]) / (ref["fwd_s"] + ref["bwd_s"]),
            ]
        )
    md = [
        "# Attention on CPU: tiled FlashAttention-2 reference (PyTorch) vs naive attention",
        "",
        f"- {info['date']}; device {info['device']}; python {info['python']}, torch {info['torch']};"
        f" load average {info['loadavg_start'][0]:.2f} at start, {info['loadavg_end'][0]:.2f} at end (shared machine)",
        "- rerun: `python -m benchmarks.bench_attention --cpu` (repository root, venv active)",
        f"- causal, B=1, H={H}, Dh={Dh}, fp32; per (implementation, T) a fresh process: a T=256 warm-up, then"
        f" forward + backward {rows[0]['repeats']} times; times are the fastest of those runs (other jobs share the"
        " machine; all runs are in the .json), memory is from the first run",
        "- peak added = the process's peak RSS during forward + backward (Linux VmHWM, reset just before the"
        " forward) minus its RSS then: what forward + backward allocated on top of the inputs (it includes"
        " allocator slack, so it is what the machine had to provide)",
        "",
        markdown_table(
            [
                "T",
                "reference peak added MiB",
                "naive peak added MiB",
                "one T x T fp32 matrix MiB",
                "reference fwd s",
                "reference bwd s",
                "naive fwd s",
                "naive bwd s",
                "naive time / reference time",
            ],
            table,
        ),
        "",
        "The reference keeps O, L (T floats per head) and one 128 x 128 tile per step: its added memory grows"
        " linearly with T (the dQ/dK/dV accumulators and fp32 copies of q/k/v tiles), while naive attention holds"
        " several T x T matrices (scores, probabilities, their gradients) at once.",
    ]
    save_report(Path(args.out), "attention_cpu", "\n".join(md) + "\n", dict(info=info, rows=rows))


# ------------------------------------------------------------------------------------------------ GPU
def _flops(B: int, H: int, T: int, Dh: int, mode: str) -> float:
    """Matmul FLOPs of causal attention: forward 4 B H T^2 Dh / 2 (QK^T and PV, half masked);
    backward 2.5x (five matmuls instead of two; FA2 paper's accounting); fwd+bwd 3.5x."""
    fwd = 4 * B * H * T * T * Dh / 2
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]


def _matmul_peak_tflops() -> float:
    import torch
    from triton.testing import do_bench

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, warmup=100, rep=500)
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


def _impls():
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from scratchlm.kernels import attention

    def sdpa(q, k, v):
        backend = SDPBackend.FLASH_ATTENTION if q.dtype != torch.float32 else SDPBackend.EFFICIENT_ATTENTION
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return {
        "scratchlm triton": lambda q, k, v: attention(q, k, v, causal=True, backend="triton"),
        "torch sdpa (flash; fp32: mem-efficient)": sdpa,
        "naive pytorch": lambda q, k, v: attention(q, k, v, causal=True, backend="naive"),
    }


def _check(impls: dict) -> None:
    """Every implementation against SDPA's math backend in fp32 at a small shape, before any timing."""
    import torch

    from scratchlm.kernels import attention

    q, k, v = (torch.randn(2, 4, 300, 64, device="cuda") for _ in range(3))
    want = attention(q.double(), k.double(), v.double(), causal=True, backend="naive")
    for name, fn in impls.items():
        for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
            got = fn(q.to(dtype), k.to(dtype), v.to(dtype)).double()
            err = ((got - want).norm() / want.norm()).item()
            if not err <= tol:
                sys.exit(f"bench_attention: {name} {dtype} differs from the reference (relative error {err:.2e})")


def _time(fn, q, k, v, do, mode: str) -> float:
    from triton.testing import do_bench

    leaves = [q, k, v]
    if mode == "fwd":
        return do_bench(lambda: fn(q, k, v), warmup=25, rep=100)
    if mode == "bwd":
        o = fn(q, k, v)
        return do_bench(lambda: o.backward(do, retain_graph=True), warmup=25, rep=100, grad_to_none=leaves)
    return do_bench(lambda: fn(q, k, v).backward(do), warmup=25, rep=100, grad_to_none=leaves)


def _fits_naive(B: int, H: int, T: int, dtype) -> bool:
    import torch

    free, _ = torch.cuda.mem_get_info()
    # scores, fp32 softmax, probabilities and their gradients: about 4 fp32 (B, H, T, T) matrices at once
    return 4 * B * H * T * T * 4 < 0.8 * free


def run_gpu(args) -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_attention: no CUDA device found. The GPU benchmark needs one; use --cpu for the CPU table.")
    try:
        import triton  # noqa: F401
    except ImportError:
        sys.exit("bench_attention: triton is not installed: pip install 'scratchlm[triton]'")
    impls = _impls()
    _check(impls)
    peak = _matmul_peak_tflops()
    device = torch.cuda.get_device_name()
    print(f"{device}: measured bf16 matmul peak {peak:.0f} TFLOP/s", flush=True)
    lengths = [128, 1024, 8192] if args.quick else [2**i for i in range(7, 17)]
    head_dims = [64] if args.quick else [16, 32, 64, 128]
    dtypes = [torch.bfloat16] if args.quick else [torch.bfloat16, torch.float32]
    B, H = 1, 16
    rows = []
    for dtype in dtypes:
        for Dh in head_dims:
            for T in lengths:
                q, k, v = (torch.randn(B, H, T, Dh, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
                do = torch.randn_like(q)
                for name, fn in impls.items():
                    for mode in ("fwd", "bwd", "fwd+bwd"):
                        row = dict(impl=name, dtype=str(dtype).split(".")[-1], Dh=Dh, T=T, mode=mode)
                        if name.startswith("naive") and not _fits_naive(B, H, T, dtype):
                            rows.append({**row, "ms": None, "tflops": None, "note": "does not fit"})
                            continue
                        try:
                            ms = _time(fn, q, k, v, do, mode)
                        except torch.OutOfMemoryError:
                            rows.append({**row, "ms": None, "tflops": None, "note": "out of memory"})
                            torch.cuda.empty_cache()
                            continue
                        tflops = _flops(B, H, T, Dh, mode) / (ms * 1e-3) / 1e12
                        rows.append({**row, "ms": ms, "tflops": tflops, "note": ""})
                        print(f"{row} {ms:.3f} ms {tflops:.1f} TFLOP/s", flush=True)
                del q, k, v, do
                torch.cuda.empty_cache()
    board = []
    c = CS336
    q, k, v = (
        torch.randn(c["B"], c["H"], c["T"], c["Dh"], device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )
    do = torch.randn_like(q)
    for name, fn in impls.items():
        ms = _time(fn, q, k, v, do, "fwd+bwd")
        board.append(dict(impl=name, ms=ms))
        print(f"CS336 leaderboard setting: {name} {ms:.2f} ms", flush=True)
    info = _info(f"{device}, bf16 matmul peak measured {peak:.0f} TFLOP/s")
    info["loadavg_end"] = os.getloadavg()
    _report_gpu(args, info, peak, rows, board)


def _report_gpu(args, info: dict, peak: float, rows: list[dict], board: list[dict]) -> None:
    md = [
        "# Attention on GPU: scratchlm FlashAttention-2 (Triton) vs torch SDPA vs naive",
        "",
        f"- {info['date']}; device {info['device']}; torch {info['torch']}, triton {info['triton']}",
        f"- rerun: `python -m benchmarks.bench_attention{' --quick' if args.quick else ''}`",
        "- causal, B=1, H=16; `triton.testing.do_bench` medians (ms); TFLOP/s counts causal matmul FLOPs"
        " (forward 2 B H T^2 Dh, backward 2.5x); % = of the measured bf16 matmul peak",
        "",
        "## CS336 leaderboard setting (B=1, T=16,384, d_model 1024 = 16 x 64, bf16, causal, forward + backward)",
        "",
        markdown_table(["implementation", "ms"], [[b["impl"], b["ms"]] for b in board]),
        "",
        "CS336 reference points (H100): naive PyTorch about 80 ms; best student submission 5.36 ms.",
    ]
    for dtype in sorted({r["dtype"] for r in rows}):
        for mode in ("fwd", "bwd", "fwd+bwd"):
            md += ["", f"## {dtype}, {mode}: ms (TFLOP/s, % of bf16 matmul peak)", ""]
            sel = [r for r in rows if r["dtype"] == dtype and r["mode"] == mode]
            impls = list(dict.fromkeys(r["impl"] for r in sel))
            keys = sorted({(r["Dh"], r["T"]) for r in sel})
            table = []
            for Dh, T in keys:
                cells = [Dh, T]
                for name in impls:
                    r = next(r for r in sel if r["impl"] == name and r["Dh"] == Dh and r["T"] == T)
                    cells.append(
                        r["note"] if r["ms"] is None else f"{r['ms']:.3f} ({r['tflops']:.0f}, {r['tflops'] / peak:.0%})"
                    )
                table.append(cells)
            md.append(markdown_table(["Dh", "T", *impls], table))
    save_report(Path(args.out), "attention_gpu", "\n".join(md) + "\n", dict(info=info, rows=rows, cs336=board))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        spec = json.loads(sys.argv[2])
        return cpu_worker(spec)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="the CPU memory/time table instead of the GPU benchmark")
    ap.add_argument("--quick", action="store_true", help="smoke test: a few shapes, results to benchmarks/_work/")
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    args = ap.parse_args()
    args.out = args.out or str(WORK / "results_quick" if args.quick else RESULTS)
    run_cpu(args) if args.cpu else run_gpu(args)


if __name__ == "__main__":
    main()
