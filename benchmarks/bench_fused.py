"""Fused ops (RMSNorm, SwiGLU, chunked linear + cross-entropy): memory and time of the fused paths
against the unfused PyTorch composition.

    python -m benchmarks.bench_fused --cpu           # CPU table (~3 minutes) -> results/fused_cpu.{md,json}
    python -m benchmarks.bench_fused --cpu --quick   # smoke test
    python -m benchmarks.bench_fused                 # GPU (CUDA + triton): Triton vs PyTorch -> results/fused_gpu.*

CPU, fp32, one thread, each (op, implementation) in a fresh subprocess:
- linear + cross-entropy (N tokens x D hidden -> V vocab, mean loss, forward + backward): peak memory
  added (the kernel's peak-RSS mark VmHWM, reset just before the forward, minus the RSS then; exact,
  not sampled) and time, for the chunked `reference` (1,024-row chunks), `naive` (full logits +
  scratchlm's cross-entropy) and stock torch (F.linear + F.cross_entropy);
- RMSNorm and SwiGLU: time of forward + backward and the bytes autograd saves for the backward
  (counted with saved_tensors_hooks: the activation memory a model keeps per layer), `reference`
  (autograd.Function) against `naive` (plain autograd).
GPU: `triton.testing.do_bench` of forward + backward and `torch.cuda.max_memory_allocated` for the
Triton kernels, the PyTorch references and the unfused ops.
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

from benchmarks.bench_attention import peak_rss, reset_peak_rss
from benchmarks.common import RESULTS, WORK, cpu_model, markdown_table, run_measured, save_report, write_result

MB = 2**20
LCE = dict(N=4096, D=512, V=32_000)  # 4,096 tokens, a 32k vocabulary: the unfused logits are 500 MiB fp32
LCE_QUICK = dict(N=512, D=64, V=4000)
ELEMENTWISE = dict(N=8192, D=1024)  # RMSNorm rows x dim; SwiGLU gate/up (N, D) -- hidden size 1024
ELEMENTWISE_QUICK = dict(N=256, D=64)


def _lce_run(impl: str, h, W, targets):
    import torch.nn.functional as F

    from scratchlm.kernels import linear_cross_entropy

    if impl == "stock torch":
        return F.cross_entropy(F.linear(h, W), targets)
    return linear_cross_entropy(h, W, targets, chunk=1024, backend=impl)


def cpu_worker(spec: dict) -> None:
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    if spec["op"] == "linear_cross_entropy":
        N, D, V = spec["N"], spec["D"], spec["V"]
        h = torch.randn(N, D, generator=g).requires_grad_()
        W = (torch.randn(V, D, generator=g) * 0.02).requires_grad_()
        targets = torch.randint(0, V, (N,), generator=g)
        for _ in range(2):  # warm-up (also allocates W.grad): the first backward of a process pays one-off costs
            _lce_run(spec["impl"], h[:64], W, targets[:64]).backward()
        h.grad = None
        rss_before = reset_peak_rss()
        t0 = time.perf_counter()
        loss = _lce_run(spec["impl"], h, W, targets)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        peak = peak_rss()
        out = dict(loss=loss.item(), peak_added_mb=(peak - rss_before) / MB, logits_mb=N * V * 4 / MB)
    else:
        from scratchlm.kernels import rms_norm, swiglu

        N, D = spec["N"], spec["D"]
        a, b = torch.randn(N, D, generator=g).requires_grad_(), torch.randn(N, D, generator=g).requires_grad_()
        w = torch.ones(D, requires_grad=True)

        def run():
            if spec["op"] == "rms_norm":
                return rms_norm(a, w, backend=spec["impl"])
            return swiglu(a, b, backend=spec["impl"])

        for _ in range(2):  # warm-up, as measured: the first backward(grad) of a process pays one-off costs
            y = run()
            y.backward(torch.ones_like(y))
        saved: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.nbytes) or t, lambda t: t):
            t0 = time.perf_counter()
            y = run()
            t1 = time.perf_counter()
        y.backward(torch.ones_like(y))
        t2 = time.perf_counter()
        out = dict(saved_mb=sum(saved) / MB, input_mb=a.nbytes / MB)
    write_result(spec, dict(spec, fwd_s=t1 - t0, bwd_s=t2 - t1, t_end=time.time(), **out))


def run_cpu(args) -> None:
    lce = LCE_QUICK if args.quick else LCE
    ew = ELEMENTWISE_QUICK if args.quick else ELEMENTWISE
    rows = []
    specs = [dict(op="linear_cross_entropy", impl=i, **lce) for i in ("reference", "naive", "stock torch")]
    specs += [dict(op=op, impl=i, **ew) for op in ("rms_norm", "swiglu") for i in ("reference", "naive")]
    for spec in specs:
        r = run_measured("benchmarks.bench_fused", spec, env={"OMP_NUM_THREADS": "1"})
        rows.append(r)
        print({k: v for k, v in r.items() if k in ("op", "impl", "fwd_s", "bwd_s", "peak_added_mb", "saved_mb")})
    losses = {r["loss"] for r in rows if "loss" in r}
    assert max(losses) - min(losses) < 1e-4 * max(losses), f"the implementations disagree on the loss: {losses}"
    info = dict(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        device=f"CPU ({cpu_model()}, {os.cpu_count()} cores, 1 thread used)",
        python=platform.python_version(),
        torch=__import__("torch").__version__,
        loadavg_end=os.getloadavg(),
    )
    lce_rows = [r for r in rows if r["op"] == "linear_cross_entropy"]
    ew_rows = [r for r in rows if r["op"] != "linear_cross_entropy"]
    md = [
        "# Fused ops on CPU: memory and time against the unfused composition",
        "",
        f"- {info['date']}; device {info['device']}; python {info['python']}, torch {info['torch']};"
        f" load average at end {info['loadavg_end'][0]:.2f} (shared machine)",
        f"- rerun: `python -m benchmarks.bench_fused --cpu{' --quick' if args.quick else ''}` (repository root)",
        "- fp32; one forward + backward per fresh process, after a small warm-up",
        "",
        f"## Linear + cross-entropy: N={lce['N']} tokens, D={lce['D']}, V={lce['V']} (full logits"
        f" {lce_rows[0]['logits_mb']:.0f} MiB fp32)",
        "",
        "Peak added: the process's peak RSS during forward + backward (Linux VmHWM, reset just before the"
        " forward) minus its RSS then. The chunked path needs one 1,024 x V chunk of logits (fp32) plus dW"
        " (V x D) and dh (N x D); the unfused paths hold the N x V logits, and their gradient, at once.",
        "",
        markdown_table(
            ["implementation", "peak added MiB", "forward s", "backward s", "loss"],
            [[r["impl"], r["peak_added_mb"], r["fwd_s"], r["bwd_s"], f"{r['loss']:.6f}"] for r in lce_rows],
        ),
        "",
        "The chunked forward also computes the gradients (so its 'forward' holds nearly all the work and its"
        " backward only scales them).",
        "",
        f"## RMSNorm and SwiGLU: ({ew['N']}, {ew['D']}) inputs",
        "",
        "Saved MiB: bytes autograd keeps for the backward (saved_tensors_hooks), the activation memory per"
        f" layer; one input is {ew_rows[0]['input_mb']:.0f} MiB.",
        "",
        markdown_table(
            ["op", "implementation", "saved for backward MiB", "forward s", "backward s"],
            [[r["op"], r["impl"], r["saved_mb"], r["fwd_s"], r["bwd_s"]] for r in ew_rows],
        ),
    ]
    save_report(Path(args.out), "fused_cpu", "\n".join(md) + "\n", dict(info=info, rows=rows))


def run_gpu(args) -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_fused: no CUDA device found. The GPU benchmark needs one; use --cpu for the CPU table.")
    try:
        from triton.testing import do_bench
    except ImportError:
        sys.exit("bench_fused: triton is not installed: pip install 'scratchlm[triton]'")
    import torch.nn.functional as F

    from scratchlm.kernels import linear_cross_entropy, rms_norm, swiglu

    dev, rows = torch.cuda.get_device_name(), []

    def bench(op: str, impl: str, fn, leaves) -> None:
        fn().float().sum().backward()  # compile / autotune, and a correctness-free warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn().float().sum().backward()
        peak = (torch.cuda.max_memory_allocated() - base) / MB
        ms = do_bench(lambda: fn().float().sum().backward(), grad_to_none=leaves, warmup=25, rep=100)
        rows.append(dict(op=op, impl=impl, ms=ms, peak_added_mb=peak))
        print(rows[-1], flush=True)

    N, D, F_, V = (2048, 1024, 2816, 32000) if args.quick else (16384, 4096, 11008, 128256)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    x, w = torch.randn(N, D, **bf16, requires_grad=True), torch.ones(D, **bf16, requires_grad=True)
    g, u = (torch.randn(N, F_, **bf16, requires_grad=True) for _ in range(2))
    h = torch.randn(N // 2, 2048, **bf16, requires_grad=True)
    W = (torch.randn(V, 2048, **bf16) * 0.02).requires_grad_()
    t = torch.randint(0, V, (N // 2,), device="cuda")
    for impl in ("triton", "reference", "naive"):
        bench("rms_norm", impl, lambda impl=impl: rms_norm(x, w, backend=impl), [x, w])
        bench("swiglu", impl, lambda impl=impl: swiglu(g, u, backend=impl), [g, u])
        bench("linear_cross_entropy", impl, lambda impl=impl: linear_cross_entropy(h, W, t, backend=impl), [h, W])
    bench("linear_cross_entropy", "stock torch", lambda: F.cross_entropy(F.linear(h, W).float(), t), [h, W])
    md = [
        "# Fused ops on GPU: Triton vs PyTorch",
        "",
        f"- {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}; device {dev}; torch {torch.__version__}",
        f"- rerun: `python -m benchmarks.bench_fused{' --quick' if args.quick else ''}`",
        f"- bf16; rms_norm ({N}, {D}); swiglu ({N}, {F_}); linear + cross-entropy {N // 2} tokens, D 2048, V {V};"
        " forward + backward, do_bench median; peak added = max_memory_allocated minus allocated before",
        "",
        markdown_table(
            ["op", "implementation", "ms", "peak added MiB"],
            [[r["op"], r["impl"], r["ms"], r["peak_added_mb"]] for r in rows],
        ),
    ]
    save_report(Path(args.out), "fused_gpu", "\n".join(md) + "\n", dict(device=dev, rows=rows))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        return cpu_worker(json.loads(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="the CPU table instead of the GPU benchmark")
    ap.add_argument("--quick", action="store_true", help="smoke test: small shapes, results to benchmarks/_work/")
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    args = ap.parse_args()
    args.out = args.out or str(WORK / "results_quick" if args.quick else RESULTS)
    run_cpu(args) if args.cpu else run_gpu(args)


if __name__ == "__main__":
    main()
