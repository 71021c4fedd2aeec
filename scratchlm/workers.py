"""Worker processes on this machine: how many to start by default, and how to start them.

One place for both answers, shared by tokenizer training, corpus encoding and the data pipeline's
local executor.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os

log = logging.getLogger(__name__)


def default_workers() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def resolve_workers(requested: int | None, what: str = "workers") -> int:
    """Worker processes to start for `requested` (None or 0: one per core). More than the cores this process
    may use is capped there, with a warning: the work is CPU-bound, and with fork a pool starts every process
    at once (num_workers=100000 would start 100,000 processes)."""
    from scratchlm.errors import InvalidArgument

    cores = default_workers()
    if not requested:
        return cores
    if requested < 0:
        raise InvalidArgument(f"{what} must be >= 0 (0 = one per core), got {requested}")
    if requested > cores:
        log.warning("%s=%d is more than the %d CPU cores this process may use: using %d", what, requested, cores, cores)
        return cores
    return requested


def process_context():
    """The fork start method where available, so workers inherit what the parent built (tables, stages
    registered at run time) without pickling it; else spawn."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
