"""Communication counted per step against the textbook formulas, on 2 gloo processes: own DDP all-reduces
4 x Psi bytes per step (one call per parameter, or per bucket), ring bus bytes 2 (N - 1) / N of that;
ZeRO-1 adds a 4 x Psi broadcast of the updated parameters (N calls); construction broadcasts the model once;
all_gather / reduce_scatter / send / recv sizes; the collectives are restored on exit."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from scratchlm.distributed.comm_count import CommCounter, count_comm
from tests.distributed.multiproc import run_ranks


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 64), nn.LayerNorm(64), nn.Linear(64, 8))


def step(model, dp, opt) -> None:
    x = torch.randn(2, 8)
    F.mse_loss(model(x), torch.zeros(2, 8)).backward()
    dp.finish_gradient_synchronization()
    opt.step()
    opt.zero_grad()


def worker(rank: int, world: int) -> dict:
    from scratchlm.distributed.data_parallel import DataParallel
    from scratchlm.distributed.zero import ShardedOptimizer

    out = {}
    with count_comm() as c:
        model = build()
        dp = DataParallel(model)
    out["construct"] = dict(c.payload), dict(c.calls)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with count_comm() as c:
        step(dp, dp, opt)
    out["ddp"] = dict(c.payload), dict(c.calls), dict(c.bus)
    bucketed = DataParallel(build(), bucket_size_mb=0.002)  # 2 KB buckets
    opt = torch.optim.SGD(bucketed.parameters(), lr=0.1)
    with count_comm() as c:
        step(bucketed, bucketed, opt)
    out["bucketed"] = dict(c.payload), dict(c.calls), len(bucketed.buckets)
    zero = ShardedOptimizer(dp.parameters(), torch.optim.AdamW, lr=1e-3)
    with count_comm() as c:
        step(dp, dp, zero)
    out["zero1"] = dict(c.payload), dict(c.calls), dict(c.bus)
    with count_comm() as c:
        t = torch.ones(10)
        dist.all_gather_into_tensor(torch.empty(10 * world), t)
        dist.all_gather([torch.empty(10) for _ in range(world)], t)
        dist.reduce_scatter_tensor(torch.empty(10), torch.ones(10 * world))
        if rank == 0:
            dist.send(torch.ones(5), dst=1)
        else:
            dist.recv(torch.empty(5), src=0)
    out["misc"] = dict(c.payload), dict(c.bus)
    return out


def test_counts_match_formulas():
    world = 2
    results = run_ranks(worker, world)
    model = build()
    psi = sum(p.numel() for p in model.parameters())
    n_params = len(list(model.parameters()))
    ring = 2 * (world - 1) / world
    for rank, r in enumerate(results):
        payload, calls = r["construct"]
        assert payload == {"broadcast": 4 * psi} and calls == {"broadcast": n_params}  # no buffers here
        payload, calls, bus = r["ddp"]
        assert payload == {"all_reduce": 4 * psi}  # DDP: the fp32 gradients once per step
        assert calls == {"all_reduce": n_params}
        assert bus["all_reduce"] == ring * 4 * psi
        payload, calls, n_buckets = r["bucketed"]
        assert payload == {"all_reduce": 4 * psi} and calls == {"all_reduce": n_buckets} and 1 < n_buckets < n_params
        payload, calls, bus = r["zero1"]
        # ZeRO-1 as built here: grads all-reduced (4 Psi), updated params broadcast by their owners (4 Psi)
        assert payload == {"all_reduce": 4 * psi, "broadcast": 4 * psi}
        assert calls == {"all_reduce": n_params, "broadcast": world}
        assert bus == {"all_reduce": ring * 4 * psi, "broadcast": 4 * psi}
        payload, bus = r["misc"]
        p2p = "send" if rank == 0 else "recv"
        assert payload == {"all_gather_into_tensor": 80, "all_gather": 80, "reduce_scatter_tensor": 80, p2p: 20}
        assert bus == {"all_gather_into_tensor": 40, "all_gather": 40, "reduce_scatter_tensor": 40, p2p: 20}


def test_restores_collectives_and_accumulates():
    before = dist.all_reduce
    counter = CommCounter()
    with count_comm(counter) as c:
        assert c is counter and dist.all_reduce is not before
    assert dist.all_reduce is before
    counter.record("all_reduce", 100, 4)
    counter.record("all_reduce", 100, 4)
    assert counter.calls["all_reduce"] == 2 and counter.total_payload == 200 and counter.total_bus == 300
    assert "all_reduce" in counter.table()
    counter.reset()
    assert counter.total_payload == 0
