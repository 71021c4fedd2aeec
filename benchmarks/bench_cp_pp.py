"""Pipeline bubble against micro-batch count, and ring attention against full attention, on 2 gloo processes (CPU).

    nice python -m benchmarks.bench_cp_pp            # both; writes benchmarks/results/{pipeline,ring_attention}.md
    nice python -m benchmarks.bench_cp_pp --steps 3  # fewer timed steps
    nice python -m benchmarks.bench_cp_pp --part pipeline   # only the pipeline table

Pipeline: a 4-layer TransformerLM in 2 stages, 1F1B and GPipe, a fixed global batch cut into m micro-batches,
run by torch's schedules (pipeline.build_schedule) and by the project's own (pipeline_own.OwnPipeline, which
also reports the most activations each stage stored at once); a step (forward + backward of every
micro-batch) is timed between barriers, median over steps. The measured
bubble is 1 - (T_1 / p) / T_step, T_1 the one-process step time on the same batch, against the ideal
(p - 1) / (m + p - 1); on a shared 2-core CPU the two stages also compete for cores, which this includes.
Ring attention: forward + backward of causal attention at several sequence lengths, 2 ranks each holding
half (load-balanced), against one process running the reference FlashAttention-2 on the whole sequence.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist

from tests.distributed.multiproc import run_ranks

MODEL = dict(vocab_size=512, context_length=128, d_model=128, n_layers=4, n_heads=4, tie_embeddings=False)
BATCH, SEQ = 16, 128


def _model():
    from scratchlm.config import from_dict
    from scratchlm.model import ModelConfig, TransformerLM

    torch.manual_seed(0)
    return TransformerLM(from_dict(ModelConfig, MODEL))


def _pp_worker(rank, world, impl, kind, m, steps):
    from scratchlm.distributed.pipeline import build_schedule, pipeline_stage_module
    from scratchlm.distributed.pipeline_own import OwnPipeline

    stage = pipeline_stage_module(_model(), rank, world)
    first, last = rank == 0, rank == world - 1
    if impl == "own":
        pipe = OwnPipeline(stage, rank, world, m, kind, batch_size=BATCH, seq_len=SEQ)
    else:
        sched = build_schedule(stage, rank, world, m, kind)
    g = torch.Generator().manual_seed(0)
    ids, tgt = torch.randint(0, 512, (BATCH, SEQ), generator=g), torch.randint(0, 512, (BATCH, SEQ), generator=g)
    times = []
    for _ in range(steps + 1):
        dist.barrier()
        t0 = time.perf_counter()
        if impl == "own":
            pipe.step(ids if first else None, tgt if last else None)
        elif first:
            sched.step(ids)
        elif last:
            sched.step(target=tgt)
        else:
            sched.step()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), pipe.peak_in_flight if impl == "own" else None


def _one_process(steps):
    from scratchlm.distributed.pipeline import lm_loss

    torch.set_num_threads(1)
    model = _model()
    g = torch.Generator().manual_seed(0)
    ids, tgt = torch.randint(0, 512, (BATCH, SEQ), generator=g), torch.randint(0, 512, (BATCH, SEQ), generator=g)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        lm_loss(model(ids), tgt).backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _ring_worker(rank, world, T, steps):
    from scratchlm.distributed.ring_attention import ring_attention, shard_sequence

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, T, 32, generator=g) for _ in range(3))
    ql, kl, vl = (shard_sequence(t, None, dim=2).requires_grad_() for t in (q, k, v))
    times = []
    for _ in range(steps + 1):
        dist.barrier()
        t0 = time.perf_counter()
        ring_attention(ql, kl, vl).sum().backward()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _full_attention(T, steps):
    from scratchlm.kernels.attention import attention_with_lse

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, T, 32, generator=g).requires_grad_() for _ in range(3))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        attention_with_lse(q, k, v, True, "reference")[0].sum().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--part", choices=("all", "pipeline", "ring"), default="all")
    args = ap.parse_args()
    os.makedirs("benchmarks/results", exist_ok=True)
    if args.part in ("all", "pipeline"):
        _pipeline_table(args)
    if args.part in ("all", "ring"):
        _ring_table(args)


def _pipeline_table(args) -> None:
    p = 2
    t1 = _one_process(args.steps)
    cmd = f"nice python -m benchmarks.bench_cp_pp --part pipeline --steps {args.steps}"
    rows = [
        "# Pipeline parallel: step time and bubble vs micro-batches (2 stages, gloo, shared 2-core CPU)",
        "",
        f"TransformerLM d=128, 4 layers, batch {BATCH} x {SEQ}; one process: {t1 * 1e3:.0f} ms per step "
        f"(fwd+bwd). Command: `{cmd}`. torch = torch.distributed.pipelining (`build_schedule`), own = "
        "`pipeline_own.OwnPipeline`; peak = most activations stored at once on stage 0 / stage 1.",
        "The CPU is shared with other jobs (uptime load average at the start: "
        f"{os.getloadavg()[0]:.1f}): times are noisy, compare rows of one run only.",
        "",
        "| impl | schedule | m | step ms | measured bubble 1-(T1/p)/T | ideal (p-1)/(m+p-1) | peak activations |",
        "|---|---|---|---|---|---|---|",
    ]
    runs = [("torch", "gpipe", m) for m in (1, 2, 4, 8)] + [("torch", "1f1b", m) for m in (2, 4, 8)]  # torch: m >= p
    runs += [("own", kind, m) for kind in ("gpipe", "1f1b") for m in (1, 2, 4, 8)]
    for impl, kind, m in runs:
        res = run_ranks(_pp_worker, p, (impl, kind, m, args.steps), timeout_s=300)
        t = max(r[0] for r in res)
        peak = " / ".join(str(r[1]) for r in res) if impl == "own" else "-"
        rows.append(
            f"| {impl} | {kind} | {m} | {t * 1e3:.0f} | {1 - t1 / p / t:.2f} | {(p - 1) / (m + p - 1):.2f} | {peak} |"
        )
        print(rows[-1], flush=True)
    with open("benchmarks/results/pipeline.md.tmp", "w") as f:
        f.write("\n".join(rows) + "\n")
    os.replace("benchmarks/results/pipeline.md.tmp", "benchmarks/results/pipeline.md")


def _ring_table(args) -> None:
    rows = [
        "# Ring attention (2 ranks, load-balanced causal) vs full attention (1 process), fwd+bwd, CPU",
        "",
        "B=1, H=4, Dh=32; both on the reference FlashAttention-2 blocks. "
        f"Command: `nice python -m benchmarks.bench_cp_pp --steps {args.steps}`.",
        "",
        "| T | full ms | ring (2 ranks) ms | ring / full |",
        "|---|---|---|---|",
    ]
    for T in (256, 512, 1024):
        full = _full_attention(T, args.steps)
        ring = max(run_ranks(_ring_worker, 2, (T, args.steps), timeout_s=300))
        rows.append(f"| {T} | {full * 1e3:.1f} | {ring * 1e3:.1f} | {ring / full:.2f} |")
        print(rows[-1], flush=True)
    with open("benchmarks/results/ring_attention.md.tmp", "w") as f:
        f.write("\n".join(rows) + "\n")
    os.replace("benchmarks/results/ring_attention.md.tmp", "benchmarks/results/ring_attention.md")


if __name__ == "__main__":
    main()
