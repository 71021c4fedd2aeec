"""Worker processes on this machine: how many to start by default, and how to start them.

One place for these answers, shared by tokenizer training, corpus encoding and the data pipeline's
local executor:

    with worker_pool(resolve_workers(n), initializer=f, initargs=(x,)) as pool:   # workers die with us
        ...
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

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


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: the signal a process gets when the thread that forked it exits
WATCH_INTERVAL_S = 0.5  # how often a worker checks that its parent is alive (where prctl is not used)


def exit_with_parent(parent_pid: int, parent_is_main_thread: bool = True) -> None:
    """Make this (worker) process end when `parent_pid`, the process that started it, dies.

    A pool worker blocks on its task queue forever once its driver is gone: a SIGKILLed `data run` or
    `tokenizer encode` would leave its workers alive (busy until their task ends, then idle). On Linux
    the kernel sends SIGKILL to this process when its parent dies (`prctl(PR_SET_PDEATHSIG)`); the kernel
    ties that to the parent *thread* that forked us, so it is only used when that was the main thread.
    Everywhere a daemon thread also polls the parent pid (which changes to the reaper's when the parent
    dies) and exits, for other systems and other threads. A parent already gone ends this process now.
    """
    if sys.platform.startswith("linux") and parent_is_main_thread:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl (another libc): the watchdog below still works
            pass
    if os.getppid() != parent_pid:  # died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_pool_worker(parent: tuple[int, bool], initializer: Callable | None, initargs: tuple) -> None:
    exit_with_parent(*parent)
    if initializer is not None:
        initializer(*initargs)


def worker_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A process pool (`process_context()`) whose workers end when this process dies (`exit_with_parent`),
    then run `initializer(*initargs)` as ProcessPoolExecutor's would."""
    parent = (os.getpid(), threading.current_thread() is threading.main_thread())
    return ProcessPoolExecutor(
        workers, mp_context=process_context(), initializer=_init_pool_worker, initargs=(parent, initializer, initargs)
    )
