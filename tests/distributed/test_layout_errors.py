"""Bad layouts are refused with one line before any process group exists; a rank that dies or hangs makes the
others stop with a clear error within the process group's timeout instead of waiting forever."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from datetime import timedelta

import pytest
import torch.distributed as dist
from multiproc import free_port
from parity import config

from scratchlm.distributed.mesh import ParallelDims, check_layout, init_distributed
from scratchlm.errors import ScratchLMError

MODEL = dict(vocab_size=64, n_heads=4, n_kv_heads=2, d_ff=96, n_layers=3, context_length=16)


@pytest.mark.parametrize(
    "parallel, world, model, match",
    [
        ({"tp": 3}, 4, {}, "needs a multiple of 3 processes, world size is 4"),
        ({"dp_shard": 2, "tp": 2, "dp_replicate": 2}, 4, {}, "needs a multiple of 8 processes, world size is 4"),
        ({"tp": 8}, 8, {}, "n_heads=4 is not divisible by tp=8"),
        ({"tp": 4}, 4, {}, "n_kv_heads=2 is not divisible by tp=4"),
        ({"tp": 4}, 4, {"d_ff": 90, "n_kv_heads": 4}, "d_ff=90 is not divisible by tp=4"),
        ({"tp": 2}, 2, {"vocab_size": 63}, "vocab_size=63 is not divisible by tp=2"),
        ({"pp": 2}, 2, {}, "n_layers=3 is not divisible by pp=2"),
        ({"cp": 3}, 3, {}, r"seq_len=16 is not divisible by 2\*cp=6"),
        ({"cp": 2}, 2, {"layer_pattern": "LS", "window": 4}, "full-attention layers only, got layer_pattern='LS'"),
        ({"cp": 2}, 2, {"attention": "linear"}, "context parallel rings softmax attention, not 'linear'"),
        ({"cp": 2}, 2, {"dropout_attn": 0.1}, r"no attention dropout \(dropout_attn = 0\)"),
        ({"tp": -1}, 2, {}, "parallel.tp must be >= 1, got -1"),
        ({"dp_shard": 0}, 2, {}, "parallel.dp_shard must be >= 1 or -1, got 0"),
    ],
)
def test_bad_layout_is_one_line_before_any_process_group(monkeypatch, parallel, world, model, match):
    cfg = config(parallel, model={**MODEL, **model})
    monkeypatch.setenv("WORLD_SIZE", str(world))
    with pytest.raises(ScratchLMError, match=match) as e:
        init_distributed(cfg)
    assert "\n" not in str(e.value) and not dist.is_initialized()


@pytest.mark.parametrize(
    "parallel, model, kw, match",
    [
        ({"pp": 2}, {}, {"grad_accum": 2}, "tied embeddings cannot be split across stages"),
        ({"pp": 2, "tp": 2}, {"tie_embeddings": False}, {"grad_accum": 2}, "dp_replicate only"),
        (
            {"pp": 2},
            {"tie_embeddings": False},
            {},
            "1F1B needs at least pp = 2 micro-batches per step, got grad_accum = 1",
        ),
        ({"pp": 2}, {"tie_embeddings": False}, {"grad_accum": 2, "precision": "fp16"}, "fp16 loss scaling"),
        ({"pp": 2}, {"tie_embeddings": False, "fused_loss": True}, {"grad_accum": 2}, "plain next-token loss"),
    ],
)
def test_pipeline_runs_refuse_what_the_stages_cannot_do(monkeypatch, parallel, model, kw, match):
    cfg = config(parallel, model={**MODEL, "n_layers": 2, **model}, **kw)
    monkeypatch.setenv("WORLD_SIZE", str(2 * parallel.get("tp", 1)))
    with pytest.raises(ScratchLMError, match=match) as e:
        init_distributed(cfg)
    assert "\n" not in str(e.value) and not dist.is_initialized()


def test_minus_one_fills_the_world():
    p = config().parallel
    assert ParallelDims.from_config(p, 4).enabled == {"dp_replicate": 4}  # default: DDP replicas, as before
    p = config({"dp_shard": -1, "tp": 2}).parallel
    assert ParallelDims.from_config(p, 8).enabled == {"dp_shard": 4, "tp": 2}
    p = config({"dp_shard": 2, "tp": 2}).parallel  # dp_replicate -1 takes the rest: HSDP
    assert ParallelDims.from_config(p, 8).enabled == {"dp_replicate": 2, "dp_shard": 2, "tp": 2}
    check_layout(ParallelDims(dp_shard=2, tp=2), config().model, 16)  # fits: no error


def _rank(rank: int, port: int, fail: str, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=3))
    if rank == 1:
        if fail == "dies":
            raise SystemExit(3)  # dies without a word (no destroy_process_group)
        time.sleep(30)  # hangs
        return
    import torch

    from scratchlm.distributed.mesh import peer_failures

    t0 = time.perf_counter()
    try:
        with peer_failures(3.0):
            for _ in range(100):
                dist.all_reduce(torch.ones(4))
                time.sleep(0.05)
        q.put(("no error", 0.0))
    except ScratchLMError as e:
        q.put((str(e), time.perf_counter() - t0))


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multiprocess tests run on Linux")
@pytest.mark.parametrize("fail", ["dies", pytest.param("hangs", marks=pytest.mark.slow)])
def test_a_rank_that_dies_or_hangs_stops_the_others_with_a_clear_error(fail):
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, fail, q)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        msg, waited = q.get(timeout=60)  # rank 0's outcome; a hang fails here instead of blocking the suite
    finally:
        for p in procs:
            p.kill()
            p.join()
    assert "another process died or did not answer within parallel.timeout_s = 3 s" in msg, msg
    assert msg.startswith("rank 0:") and "\n" not in msg
    assert waited < 30  # bounded by the timeout, not by the sleeping rank (30 s)
