"""`scratchlm bench allreduce`: the bandwidth formulas, a 2-process gloo run, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.bench.collectives import AllReduceConfig, bandwidths, parse_sizes, run_allreduce_bench
from scratchlm.cli import main
from scratchlm.errors import ScratchLMError


def test_bandwidth_formulas():
    # 1 GB in 0.5 s: algbw 2 GB/s; a ring all-reduce moves 2 (n - 1) / n of it through each link
    assert bandwidths(1e9, 0.5, 4) == pytest.approx((2e9, 2e9 * 2 * 3 / 4))
    assert bandwidths(1e9, 0.5, 2) == pytest.approx((2e9, 2e9))  # n = 2: busbw = algbw
    assert bandwidths(1e9, 0.5, 8)[1] == pytest.approx(3.5e9)
    assert bandwidths(1e9, 0.5, 1)[1] == 0.0  # nothing moves between one rank and itself
    with pytest.raises(ScratchLMError):
        bandwidths(1e9, 0.0, 2)


def test_two_process_gloo_run_from_the_cli(tmp_path, capsys):
    out = tmp_path / "ar.json"
    args = ["bench", "allreduce", "--nproc", "2", "--sizes-mb", "0.001,0.1", "--warmup", "1", "--iters", "3"]
    assert main([*args, "--backend", "gloo", "--json", str(out)]) == 0
    assert "busbw (GB/s)" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert (r["backend"], r["world"], r["dtype"]) == ("gloo", 2, "float32")
    rows = r["rows"]
    assert [row["size_bytes"] for row in rows] == [1000, 100_000]  # float32 elements, 4 bytes each
    for row in rows:
        assert 0 < row["min_s"] <= row["median_s"]
        assert row["algbw_gbps"] == pytest.approx(row["size_bytes"] / row["median_s"] / 1e9)
        assert row["busbw_gbps"] == pytest.approx(row["algbw_gbps"])  # n = 2


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(nproc=1), "--nproc must be >= 2"),
        (dict(sizes_mb=[1, 0]), "message sizes must be > 0"),
        (dict(sizes_mb=[]), "message sizes must be > 0"),
        (dict(iters=0), "--iters must be >= 1"),
        (dict(dtype="int3"), "unknown dtype 'int3'"),
        (dict(backend="mpi"), "unknown backend 'mpi'"),
    ],
)
def test_bad_input_is_refused_before_any_process_starts(change, match):
    with pytest.raises(ScratchLMError, match=match):
        run_allreduce_bench(AllReduceConfig(**change))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_nccl_without_cuda():
    with pytest.raises(ScratchLMError, match="nccl backend needs CUDA"):
        run_allreduce_bench(AllReduceConfig(backend="nccl"))


def test_parse_sizes():
    assert parse_sizes("1, 4,16.5") == [1.0, 4.0, 16.5]
    with pytest.raises(ScratchLMError, match="comma-separated numbers"):
        parse_sizes("1,x")


def test_a_rank_that_dies_is_reported_not_waited_for():
    """`_wait` gives up as soon as a rank has exited without a result (killed, out of memory)."""
    import queue as queue_mod

    from scratchlm.bench.collectives import _wait

    class Proc:
        def __init__(self, exitcode):
            self.exitcode = exitcode

    status, message = _wait([Proc(None), Proc(-9)], queue_mod.Queue(), timeout=60)
    assert (status, message) == ("error", "rank 1 exited with code -9")  # not "no result within 60 s"
    q = queue_mod.Queue()
    q.put(("error", "rank 0: RuntimeError: boom"))
    assert _wait([Proc(None), Proc(None)], q, timeout=60) == ("error", "rank 0: RuntimeError: boom")
