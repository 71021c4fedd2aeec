"""All-reduce benchmark: algorithm and bus bandwidth over message sizes (gloo on CPU, NCCL on GPU).

    cfg = AllReduceConfig(nproc=4, sizes_mb=[1, 16, 256])
    result = run_allreduce_bench(cfg)     # spawns nproc processes, or runs as one rank under torchrun
    print(format_rows(result))

Per size: one all-reduce checked for the right sum, `warmup` untimed ones, then `iters` timed ones,
each between a barrier and a device sync; an iteration's time is the slowest rank's (the collective
is done when the last rank is), and the table reports the median over iterations.

Bandwidths as nccl-tests defines them (NVIDIA, doc/PERFORMANCE.md): algorithm bandwidth
algbw = S / t (S the message size in bytes), and bus bandwidth busbw = algbw x 2 (n - 1) / n, since a
ring all-reduce moves 2 (n - 1) / n x S bytes through every rank's link: busbw is comparable to the
link's hardware bandwidth whatever n is. Sizes are in MB = 10^6 bytes, bandwidths in GB/s = 10^9 B/s.
"""

from __future__ import annotations

import datetime
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from scratchlm.errors import ScratchLMError

MB = 10**6
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class AllReduceConfig:
    nproc: int = 2  # processes to spawn (torchrun's WORLD_SIZE instead when launched by it)
    sizes_mb: list[float] = field(default_factory=lambda: [1, 4, 16, 64, 256])
    backend: str | None = None  # None: nccl when CUDA is available, else gloo
    warmup: int = 3
    iters: int = 10
    dtype: str = "float32"
    timeout_s: float = 300.0  # a rank that dies: the others give up after this

    def resolved_backend(self) -> str:
        return self.backend or ("nccl" if torch.cuda.is_available() else "gloo")

    def validate(self) -> None:
        if self.nproc < 2:
            raise ScratchLMError(f"--nproc must be >= 2 (an all-reduce needs two processes), got {self.nproc}")
        if not self.sizes_mb or any(s <= 0 for s in self.sizes_mb):
            raise ScratchLMError(f"message sizes must be > 0 MB, got {self.sizes_mb}")
        if self.iters < 1 or self.warmup < 0:
            raise ScratchLMError(f"--iters must be >= 1 and --warmup >= 0, got {self.iters} and {self.warmup}")
        if self.dtype not in DTYPES:
            raise ScratchLMError(f"unknown dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        backend = self.resolved_backend()
        if backend not in ("gloo", "nccl"):
            raise ScratchLMError(f"unknown backend {backend!r}: expected gloo or nccl")
        if backend == "nccl" and not torch.cuda.is_available():
            raise ScratchLMError("the nccl backend needs CUDA; use --backend gloo on CPU")


def parse_sizes(text: str) -> list[float]:
    """ "1,4,16" -> [1.0, 4.0, 16.0] (MB)."""
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ScratchLMError(f"--sizes-mb must be comma-separated numbers, got {text!r}") from None


def bandwidths(size_bytes: float, seconds: float, world: int) -> tuple[float, float]:
    """(algbw, busbw) in bytes/s of an all-reduce of `size_bytes` taking `seconds` on `world` ranks."""
    if seconds <= 0 or world < 1:
        raise ScratchLMError(f"bandwidth needs time > 0 and world >= 1, got {seconds} s and {world}")
    algbw = size_bytes / seconds
    return algbw, algbw * 2 * (world - 1) / world


# ---------------------------------------------------------------------------------------------
# one rank


def _device(backend: str, local_rank: int) -> torch.device:
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(cfg: AllReduceConfig, device: torch.device) -> list[dict] | None:
    """The benchmark on this rank (process group already up); rank 0 returns the rows, others None."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = DTYPES[cfg.dtype]
    esize = torch.empty((), dtype=dtype).element_size()
    rows = []
    for size_mb in cfg.sizes_mb:
        numel = max(1, int(size_mb * MB) // esize)
        buf = torch.full((numel,), float(rank + 1), dtype=dtype, device=device)
        dist.all_reduce(buf)  # correctness: sum over ranks of (rank + 1)
        want = world * (world + 1) / 2
        if not (buf[0].item() == want and buf[-1].item() == want):
            raise RuntimeError(f"all-reduce gave {buf[0].item()}, expected {want}")
        for _ in range(cfg.warmup):
            dist.all_reduce(buf)
        times = []
        for _ in range(cfg.iters):
            dist.barrier()
            _sync(device)
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            _sync(device)
            times.append(time.perf_counter() - t0)
        # each iteration's time is the slowest rank's
        t = torch.tensor(times, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times = t.tolist()
        del buf
        if rank == 0:
            size = numel * esize
            med = statistics.median(times)
            algbw, busbw = bandwidths(size, med, world)
            rows.append(
                {
                    "size_bytes": size,
                    "size_mb": size / MB,
                    "median_s": med,
                    "mean_s": statistics.fmean(times),
                    "min_s": min(times),
                    "algbw_gbps": algbw / 1e9,
                    "busbw_gbps": busbw / 1e9,
                }
            )
    return rows if rank == 0 else None


def _worker(rank: int, world: int, cfg: AllReduceConfig, init_method: str, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # gloo does the work on its own threads; ranks share the cores
    backend = cfg.resolved_backend()
    try:
        dist.init_process_group(
            backend,
            init_method=init_method,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=cfg.timeout_s),
        )
        rows = _measure(cfg, _device(backend, rank))
        if rank == 0:
            queue.put(("ok", rows))
    except Exception as e:  # reported by the parent, which stops the other ranks
        queue.put(("error", f"rank {rank}: {type(e).__name__}: {e}"))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# launching


def _result(cfg: AllReduceConfig, world: int, rows: list[dict]) -> dict:
    backend = cfg.resolved_backend()
    return {
        "backend": backend,
        "world": world,
        "dtype": cfg.dtype,
        "device": torch.cuda.get_device_name(0) if backend == "nccl" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "config": asdict(cfg),
        "rows": rows,
    }


def run_allreduce_bench(cfg: AllReduceConfig) -> dict | None:
    """Run the benchmark: as one rank of a torchrun launch (WORLD_SIZE set; rank 0 returns the result,
    the others None), or by spawning cfg.nproc local processes. A failing rank is a ScratchLMError."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return _run_torchrun(cfg)
    cfg.validate()
    if cfg.resolved_backend() == "nccl" and torch.cuda.device_count() < cfg.nproc:
        raise ScratchLMError(f"--nproc {cfg.nproc} with nccl needs that many GPUs, found {torch.cuda.device_count()}")
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="scratchlm-allreduce-") as tmp:
        init = f"file://{Path(tmp) / 'store'}"
        procs = [ctx.Process(target=_worker, args=(r, cfg.nproc, cfg, init, queue)) for r in range(cfg.nproc)]
        for p in procs:
            p.start()
        try:
            status, payload = _wait(procs, queue, cfg.timeout_s + 60)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                p.join()
    if status != "ok":
        raise ScratchLMError(f"all-reduce benchmark failed: {payload}")
    return _result(cfg, cfg.nproc, payload)


def _wait(procs, queue, timeout: float):
    """The first message a rank sends (rank 0's rows, or any rank's error); a rank that exits without
    one (killed, out of memory) is an error too."""
    import queue as queue_mod

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=0.5)
        except queue_mod.Empty:
            dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:
                try:  # its own error message may just have arrived
                    return queue.get(timeout=2)
                except queue_mod.Empty:
                    return "error", f"rank {dead[0]} exited with code {procs[dead[0]].exitcode}"
    return "error", f"no result within {timeout:.0f} s"


def _run_torchrun(cfg: AllReduceConfig) -> dict | None:
    import torch.distributed as dist

    world = int(os.environ["WORLD_SIZE"])
    cfg.nproc = world
    cfg.validate()
    backend = cfg.resolved_backend()
    device = _device(backend, int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.timeout_s))
    try:
        rows = _measure(cfg, device)
    finally:
        dist.destroy_process_group()
    return None if rows is None else _result(cfg, world, rows)


def format_rows(result: dict) -> str:
    head = f"all-reduce, {result['backend']}, {result['world']} processes, {result['dtype']}, {result['device']}"
    lines = [head, f"{'size (MB)':>10} {'median (ms)':>12} {'algbw (GB/s)':>13} {'busbw (GB/s)':>13}"]
    for r in result["rows"]:
        lines.append(
            f"{r['size_mb']:>10g} {r['median_s'] * 1e3:>12.3f} {r['algbw_gbps']:>13.3f} {r['busbw_gbps']:>13.3f}"
        )
    return "\n".join(lines)
