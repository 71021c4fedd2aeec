"""Own data parallel against torch DDP on 2 gloo processes (CPU): step time with and without overlap, bucket
sweep, and ZeRO-1 optimizer-state memory per rank against the unsharded optimizer and the ZeRO formula.

    nice python -m benchmarks.bench_ddp                     # 2 processes, ~4M-parameter TransformerLM
    nice python -m benchmarks.bench_ddp --steps 4 --quick   # smoke test

Every variant trains the same model (rank 0's initial parameters) with AdamW on each rank's slice of the
same global batches; a step is forward + backward + gradient sync + optimizer step, timed between
barriers, and its time is the slowest rank's (all-reduce MAX); the table shows the median over the timed
steps. Variants: torch DDP (C++ reducer, 25 MB buckets), own DataParallel per parameter with overlap
(hooks launch async all-reduces during backward), the same without overlap (all launched after
backward), bucketed (overlap) over a bucket-size sweep, and bucketed 25 MB + ZeRO-1 (ShardedOptimizer).
One more step per own variant runs under count_comm for the bytes and calls per step.
Results: benchmarks/results/ddp.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.multiprocessing as mp

from benchmarks.common import RESULTS, markdown_table

MODEL = dict(vocab_size=4096, context_length=64, d_model=256, n_layers=4, n_heads=4, tie_embeddings=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _variants(buckets: list[float]) -> list[tuple[str, dict]]:
    out = [("torch DDP (25 MB buckets)", {"kind": "torch"})]
    out.append(("own, per parameter, overlap", {"kind": "own", "bucket": None, "overlap": True}))
    out.append(("own, per parameter, no overlap", {"kind": "own", "bucket": None, "overlap": False}))
    out += [(f"own, bucketed {b:g} MB, overlap", {"kind": "own", "bucket": b, "overlap": True}) for b in buckets]
    out.append(("own, bucketed 25 MB, no overlap", {"kind": "own", "bucket": 25.0, "overlap": False}))
    out.append(("own, bucketed 25 MB + ZeRO-1", {"kind": "own", "bucket": 25.0, "overlap": True, "zero": True}))
    return out


def _worker(rank: int, world: int, port: int, out_path: str, args: dict) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from scratchlm.config import from_dict
    from scratchlm.distributed.comm_count import count_comm
    from scratchlm.distributed.data_parallel import DataParallel
    from scratchlm.distributed.zero import ShardedOptimizer
    from scratchlm.model import ModelConfig, TransformerLM

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))  # fmt: skip
    cfg = from_dict(ModelConfig, MODEL)
    batch, seq = args["batch"], MODEL["context_length"]
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, MODEL["vocab_size"], (batch * world, seq + 1), generator=g) for _ in range(4)]
    results = []
    for name, v in _variants(args["buckets"]):
        torch.manual_seed(0)
        model = TransformerLM(cfg)
        if v["kind"] == "torch":
            fwd, sync = DistributedDataParallel(model), None
        else:
            fwd = sync = DataParallel(model, bucket_size_mb=v["bucket"], overlap=v["overlap"])
        if v.get("zero"):
            opt = ShardedOptimizer(model.parameters(), torch.optim.AdamW, lr=1e-4)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(i: int, fwd=fwd, sync=sync, opt=opt) -> None:
            w = data[i % len(data)][rank * batch : (rank + 1) * batch]
            logits = fwd(w[:, :-1])
            F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten()).backward()
            if sync is not None:
                sync.finish_gradient_synchronization()
            opt.step()
            opt.zero_grad(set_to_none=True)

        times = []
        for i in range(args["warmup"] + args["steps"]):
            dist.barrier()
            t0 = time.perf_counter()
            step(i)
            t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            if i >= args["warmup"]:
                times.append(float(t))
        row = {"variant": name, **v, "median_s": statistics.median(times), "times_s": times}
        if v["kind"] == "own":
            with count_comm() as c:
                step(0)
            row["comm"] = {"payload": dict(c.payload), "calls": dict(c.calls), "bus": dict(c.bus)}
            row["n_buckets"] = len(sync.buckets)
        if v.get("zero"):
            mine = torch.tensor([opt.state_bytes()], dtype=torch.int64)
            per_rank = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
            dist.all_gather(per_rank, mine)
            row["zero_state_bytes_per_rank"] = [int(x) for x in per_rank]
            plain = torch.optim.AdamW(model.parameters(), lr=1e-4)  # unsharded reference: one step on grads
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            plain.step()
            row["unsharded_state_bytes"] = sum(
                t.numel() * t.element_size() for s in plain.state.values() for t in s.values() if torch.is_tensor(t)
            )
        results.append(row)
        print(
            f"[rank {rank}] {name}: {row['median_s'] * 1e3:.0f} ms", file=sys.stderr, flush=True
        ) if rank == 0 else None
    if rank == 0:
        psi = sum(p.numel() for p in TransformerLM(cfg).parameters())
        with open(out_path, "w") as f:
            json.dump({"params": psi, "rows": results}, f)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="rows of MODEL['context_length'] tokens per process")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--buckets-mb", default="1,5,25,100")
    ap.add_argument("--quick", action="store_true", help="buckets 5 MB only")
    ap.add_argument("--out", default="ddp", help="results file stem in benchmarks/results")
    a = ap.parse_args()
    buckets = [5.0] if a.quick else [float(b) for b in a.buckets_mb.split(",")]
    args = {"batch": a.batch, "warmup": a.warmup, "steps": a.steps, "buckets": buckets}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "out.json")
        mp.spawn(_worker, args=(a.nprocs, _free_port(), path, args), nprocs=a.nprocs, join=True)
        with open(path) as f:
            res = json.load(f)
    psi, rows, n = res["params"], res["rows"], a.nprocs
    base = rows[0]["median_s"]
    header = ["variant", "buckets", "median step ms", "vs torch DDP", "all-reduce calls", "payload MB", "ring bus MB"]
    table = []
    for r in rows:
        c = r.get("comm", {})
        table.append([
            r["variant"], r.get("n_buckets", "-"), f"{r['median_s'] * 1e3:.0f}", f"{r['median_s'] / base:.2f}",
            c.get("calls", {}).get("all_reduce", "-"),
            f"{sum(c['payload'].values()) / 1e6:.1f}" if c else "-",
            f"{sum(c['bus'].values()) / 1e6:.1f}" if c else "-",
        ])  # fmt: skip
    z = next(r for r in rows if "zero_state_bytes_per_rank" in r)
    per_rank, unsharded = z["zero_state_bytes_per_rank"], z["unsharded_state_bytes"]
    formula = 8 * psi / n
    ztable = [
        [f"rank {i}", f"{b / 1e6:.2f}", f"{b / unsharded:.3f}", f"{formula / 1e6:.2f}", f"{b / formula:.3f}"]
        for i, b in enumerate(per_rank)
    ] + [["unsharded AdamW", f"{unsharded / 1e6:.2f}", "1.000", f"{8 * psi / 1e6:.2f}", f"{unsharded / (8 * psi):.3f}"]]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    command = "nice python -m benchmarks.bench_ddp " + " ".join(sys.argv[1:])
    md = "\n".join([
        "# Data parallel: own DDP vs torch DDP, and ZeRO-1 optimizer memory (gloo, CPU)",
        "",
        f"- {date}; {n} processes x 1 thread; torch {torch.__version__}; TransformerLM {psi / 1e6:.2f}M parameters"
        f" ({MODEL}); {a.batch} x {MODEL['context_length']} tokens per process; AdamW fp32",
        f"- median of {a.steps} steps after {a.warmup} warmup; a step's time is the slowest rank's; load average at"
        f" the end {load[0]:.1f} (2 shared cores: ratios are more telling than absolute times)",
        f"- per step, DDP's textbook volume is an all-reduce of 4 x Psi = {4 * psi / 1e6:.1f} MB (payload); the ring"
        f" moves 2 (N - 1) / N of it per rank ({2 * (n - 1) / n * 4 * psi / 1e6:.1f} MB); ZeRO-1 adds 4 x Psi of"
        " parameter broadcasts. Counted by scratchlm.distributed.comm_count (own variants only)",
        f"- rerun: `{command}`",
        "",
        markdown_table(header, table),
        "",
        "## ZeRO-1 optimizer state per rank",
        "",
        "ZeRO paper (Rajbhandari et al. 2020): K x Psi / N_d bytes of optimizer state per rank; K = 8 for fp32"
        " AdamW (exp_avg + exp_avg_sq; the paper's K = 12 adds fp32 master weights of mixed precision). Measured:"
        " bytes of the state tensors (also the 4-byte step counters) after one step.",
        "",
        markdown_table(["", "state MB", "/ unsharded", "formula MB", "/ formula"], ztable),
        "",
        f"Total benchmark time {time.time() - t0:.0f} s.",
        "",
    ])  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".md", md), (".json", json.dumps({"args": args, **res}, indent=1))):
        tmp = RESULTS / f".{a.out}{suffix}.tmp"
        tmp.write_text(text)
        tmp.replace(RESULTS / f"{a.out}{suffix}")
    print(md)


if __name__ == "__main__":
    main()
