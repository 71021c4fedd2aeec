"""Run a function on N gloo processes (CPU) and collect what each rank returns: the multi-process test helper.

    results = run_ranks(worker, world=2, args=(...))   # worker(rank, world, *args) -> any torch-saveable value

Each rank joins a fresh process group (a free TCP port), returns a value that is torch.saved to a temp file
and read back here; an exception in any rank fails the test with that rank's traceback (mp.spawn).
"""

from __future__ import annotations

import os
import socket
import tempfile
from datetime import timedelta

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out_dir: str, fn, args, timeout_s: float) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, args: tuple = (), timeout_s: float = 60.0) -> list:
    """fn(rank, world, *args) on `world` processes; their return values, by rank."""
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_entry, args=(world, free_port(), d, fn, args, timeout_s), nprocs=world, join=True)
        return [torch.load(os.path.join(d, f"rank{r}.pt"), weights_only=True) for r in range(world)]
