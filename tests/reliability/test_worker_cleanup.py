"""A killed driver takes its pool workers with it (issue 12: killed `data run` drivers left their workers alive,
busy until their shard ended and then blocked on the task queue forever)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from scratchlm.workers import default_workers

pytestmark = pytest.mark.skipif(default_workers() < 2, reason="one usable core: the pool runs tasks in the driver")


def wait_for_children(proc: subprocess.Popen, n: int, timeout: float = 60.0) -> list[psutil.Process]:
    driver = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = driver.children(recursive=True)
        if len(kids) >= n:
            return kids
        if proc.poll() is not None:
            pytest.fail(f"the driver ended before starting {n} workers: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail(f"the driver started no {n} workers in {timeout} s")


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def kill_driver_and_wait(proc: subprocess.Popen, workers: list[psutil.Process], within: float = 5.0) -> float:
    """SIGKILL the driver; seconds until all its workers are gone (fails after `within`)."""
    try:
        assert alive(workers), "the workers ended before the driver was killed: make their tasks longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        while alive(workers) and time.monotonic() - t0 < within:
            time.sleep(0.05)
        left = alive(workers)
        assert not left, f"workers {[p.pid for p in left]} still alive {within} s after their driver was killed"
        return time.monotonic() - t0
    finally:
        for p in alive(workers):  # never leave a stray process behind, even when the test fails
            p.kill()
        if proc.poll() is None:
            proc.kill()


def test_killed_data_run_driver_leaves_no_workers(tmp_path):
    rng = random.Random(0)
    words = "the committee met on tuesday to discuss the new library building and its reading rooms".split()
    inp = tmp_path / "in"
    inp.mkdir()
    for s in range(4):  # shards of several seconds each: the workers are busy when the driver dies
        rows = [{"id": f"{s}-{i}", "text": " ".join(rng.choice(words) for _ in range(200))} for i in range(2000)]
        (inp / f"s{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipe = tmp_path / "p.toml"
    pipe.write_text(
        f'workers = 2\n[input]\npaths = ["{inp}"]\n[output]\ndir = "{tmp_path / "run"}"\n'
        '[[stages]]\nstage = "gopher"\n[[stages]]\nstage = "pii"\n[[stages]]\nstage = "repetition"\n'
    )
    argv = [sys.executable, "-m", "scratchlm", "data", "run", str(pipe), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = wait_for_children(proc, 2)
    time.sleep(0.5)  # into their first shard
    kill_driver_and_wait(proc, workers)


DRIVER = textwrap.dedent(
    """
    import sys, threading, time
    from scratchlm.workers import worker_pool

    pools = []

    def start():  # a pool made from a thread other than the main one: the parent-pid watchdog ends the workers
        pool = worker_pool(2)
        pools.append(pool)
        for _ in range(2):
            pool.submit(time.sleep, 600)
        print("started", flush=True)

    if sys.argv[1] == "thread":
        t = threading.Thread(target=start)
        t.start()
        t.join()
    else:
        start()
    time.sleep(600)
    """
)


@pytest.mark.parametrize("where", ["main", "thread"])
def test_pool_workers_exit_when_their_parent_dies(where):
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, where], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "started", proc.stderr.read()
    workers = wait_for_children(proc, 2)
    kill_driver_and_wait(proc, workers)
