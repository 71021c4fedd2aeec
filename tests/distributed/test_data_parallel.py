"""Own DataParallel (per-parameter and bucketed) on 2 gloo processes == one process on the global batch: a few
AdamW steps on an nn.Sequential, a TransformerLM and a module with an unused parameter; no_sync accumulation;
ranks start from different seeds (rank 0's parameters are broadcast)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.config import from_dict
from scratchlm.model import ModelConfig, TransformerLM
from tests.distributed.multiproc import run_ranks

STEPS, BATCH = 3, 4
TOL = dict(rtol=1e-4, atol=1e-5)  # fp32: only the order of the gradient sums differs (Adam divides by sqrt(v))
LM = dict(vocab_size=32, context_length=8, d_model=16, n_layers=2, n_heads=2)


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 12)
        self.unused = nn.Linear(12, 12)  # never called: its grad stays None
        self.b = nn.Linear(12, 6)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def build(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "lm":
        return TransformerLM(from_dict(ModelConfig, LM))
    if kind == "unused":
        return WithUnused()
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 6))


def data(kind: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    if kind == "lm":
        w = torch.randint(0, LM["vocab_size"], (BATCH, 9), generator=g)
        return w[:, :-1], w[:, 1:]
    return torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 6, generator=g)


def loss_of(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.flatten(0, 1), y.flatten()) if kind == "lm" else F.mse_loss(out, y)


def train(kind: str, model: nn.Module, fwd: nn.Module, rows: slice, micro: int = 1, dp=None) -> nn.Module:
    if kind == "seq":  # SGD is not scale-invariant like Adam: a sum instead of a mean of the grads shows
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(STEPS):
        x, y = data(kind, step)
        x, y = x[rows], y[rows]
        for m, (xm, ym) in enumerate(zip(x.chunk(micro), y.chunk(micro), strict=True)):
            last = m == micro - 1
            ctx = dp.no_sync() if (dp is not None and not last) else torch.enable_grad()
            with ctx:
                (loss_of(kind, fwd(xm), ym) / micro).backward()
        if dp is not None:
            dp.finish_gradient_synchronization()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model


def reference(kind: str) -> dict[str, torch.Tensor]:
    m = build(kind, 0)
    return {k: v.detach().clone() for k, v in train(kind, m, m, slice(None)).state_dict().items()}


CASES = [  # (model, bucket_size_mb, micro-batches, find_unused)
    ("seq", None, 1, False),
    ("seq", 0.001, 2, False),  # ~1 KB buckets: several params per bucket, several buckets
    ("lm", None, 1, False),
    ("lm", 0.01, 1, False),
    ("unused", None, 1, False),
    ("unused", 0.001, 1, True),
]


def worker(rank: int, world: int, cases: list) -> list[dict[str, torch.Tensor]]:
    from scratchlm.distributed.data_parallel import DataParallel

    out = []
    per = BATCH // world
    for kind, size, micro, find_unused in cases:
        model = build(kind, seed=rank)  # different per rank: construction broadcasts rank 0's
        dp = DataParallel(model, bucket_size_mb=size, find_unused_parameters=find_unused)
        if size is not None:
            assert 1 < len(dp.buckets) < len(dp.params), len(dp.buckets)
        train(kind, model, dp, slice(rank * per, (rank + 1) * per), micro, dp)
        out.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return out


def test_two_processes_equal_one_process():
    results = run_ranks(worker, 2, (CASES,))
    for i, (kind, size, micro, _fu) in enumerate(CASES):
        ref = reference(kind)
        init = build(kind, 0).state_dict()
        assert any(not torch.equal(ref[k], init[k]) for k in ref)  # training moved the parameters
        for rank in range(2):
            got = results[rank][i]
            for k, v in ref.items():
                torch.testing.assert_close(got[k], v, **TOL, msg=f"{kind} bucket={size} micro={micro} rank{rank} {k}")
        if kind == "unused":  # no grad anywhere: AdamW never touched it, on any rank
            for rank in range(2):
                torch.testing.assert_close(results[rank][i]["unused.weight"], init["unused.weight"], rtol=0, atol=0)


def test_buckets_follow_reverse_registration_order_and_size():
    import torch.distributed as dist

    from scratchlm.distributed.data_parallel import DataParallel
    from scratchlm.errors import ScratchLMError
    from tests.distributed.multiproc import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        model = build("seq", 0)
        dp = DataParallel(model, bucket_size_mb=1100 / 2**20)  # 1100 bytes
        flat = [p for b in dp.buckets for p in b.params]
        assert [id(p) for p in flat] == [id(p) for p in list(model.parameters())[::-1]]
        for b in dp.buckets:  # full up to the cap; a parameter larger than the cap alone in its bucket
            assert len(b.params) == 1 or sum(p.numel() * 4 for p in b.params) <= 1100
        assert len(DataParallel(model).buckets) == len(list(model.parameters()))
        with pytest.raises(ScratchLMError, match="bucket_size_mb"):
            DataParallel(model, bucket_size_mb=0)
    finally:
        dist.destroy_process_group()


def test_needs_process_group():
    from scratchlm.distributed.data_parallel import DataParallel
    from scratchlm.errors import ScratchLMError

    with pytest.raises(ScratchLMError, match="process group"):
        DataParallel(nn.Linear(2, 2))
