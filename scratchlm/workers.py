"""Worker processes on this machine: how many to start by default, and how to start them.

One place for both answers, shared by tokenizer training, corpus encoding and the data pipeline's
local executor.
"""

from __future__ import annotations

import multiprocessing as mp
import os


def default_workers() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def process_context():
    """The fork start method where available, so workers inherit what the parent built (tables, stages
    registered at run time) without pickling it; else spawn."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
