"""Where shard tasks run: a local process pool, or a Ray cluster. Same task functions on both.

    ex = make_executor("local", workers=4)          # or make_executor("ray", address="auto")
    for i, result in ex.map(process_shard, tasks):  # results as they finish, with the task's index
        ...

A task is a module-level function and a picklable argument (paths and plain dicts), so the worker
needs only the files, never the driver's memory: on Ray the inputs and the output directory must be
on storage every node sees (NFS, a mounted bucket). Failures come back as `TaskFailure` values
instead of exceptions, so one bad shard does not stop the others.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchlm.errors import ScratchLMError
from scratchlm.workers import default_workers, resolve_workers, worker_pool


@dataclass
class TaskFailure:
    error: str  # "ExceptionType: message"
    traceback: str


def _call(fn: Callable, arg: Any) -> Any:
    try:
        return fn(arg)
    except Exception as e:
        return TaskFailure(f"{type(e).__name__}: {e}", traceback.format_exc())


class LocalExecutor:
    """A process pool (fork where available, so stages registered at run time reach the workers); the
    workers exit when the driver dies (`workers.exit_with_parent`), a SIGKILL included."""

    def __init__(self, workers: int = 0):
        self.workers = resolve_workers(workers, "workers")

    def map(self, fn: Callable, args: list[Any]) -> Iterator[tuple[int, Any]]:
        if self.workers == 1 or len(args) <= 1:
            for i, a in enumerate(args):
                yield i, _call(fn, a)
            return
        pool = worker_pool(min(self.workers, len(args)))
        try:
            pending: dict[Future, int] = {pool.submit(_call, fn, a): i for i, a in enumerate(args)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    try:
                        yield i, fut.result()
                    except Exception as e:  # the worker process died (killed, out of memory)
                        yield i, TaskFailure(f"{type(e).__name__}: {e}", traceback.format_exc())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        pass


class RayExecutor:
    """Tasks as Ray remote functions; joins `address` ("auto", "ray://host:10001") or starts a local Ray.

    Ray starts on the first task, so a rerun whose shards are all done never pays its start-up.
    """

    def __init__(self, address: str = "", workers: int = 0):
        try:
            import ray
        except ImportError:
            raise ScratchLMError(
                "executor = 'ray' needs Ray: pip install 'scratchlm[web]' (or pip install ray)"
            ) from None
        self.ray = ray
        self.address = address
        self._workers = workers
        self.started = False  # whether we started (and so must stop) Ray

    @property
    def workers(self) -> int:
        if self.ray.is_initialized():
            return int(self.ray.cluster_resources().get("CPU", 1))
        return self._workers or default_workers()

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if self.address:
            kwargs["address"] = self.address
        else:
            kwargs["num_cpus"] = self._workers or default_workers()
            # A local Ray starts fresh worker processes: let them import this checkout of scratchlm.
            root = str(Path(__file__).resolve().parents[2])
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
        ray.init(**kwargs)
        self.started = True

    def map(self, fn: Callable, args: list[Any]) -> Iterator[tuple[int, Any]]:
        if not args:
            return
        self._connect()
        ray = self.ray
        remote = ray.remote(num_cpus=1, max_retries=0)(_call)
        refs = {remote.remote(fn, a): i for i, a in enumerate(args)}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                i = refs.pop(ref)
                try:
                    yield i, ray.get(ref)
                except Exception as e:  # the worker or node died
                    yield i, TaskFailure(f"{type(e).__name__}: {e}", traceback.format_exc())

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


def make_executor(kind: str, workers: int = 0, address: str = ""):
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address, workers)
    raise ScratchLMError(f"unknown executor {kind!r}; use 'local' or 'ray'")
