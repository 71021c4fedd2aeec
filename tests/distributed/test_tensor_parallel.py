"""Tensor parallel (colwise q/k/v, gate/up; rowwise o, down; vocab-parallel tied embedding and head) on 2 gloo
processes trains like 1 process: without and with sequence parallel norms; and FSDP x TP (2-D, 4 processes,
slow). Losses and parameters after 3 AdamW steps (clipping on) equal within fp32 tolerance (parity.TOL)."""

from __future__ import annotations

import sys

import pytest
from multiproc import run_ranks
from parity import BATCH, MODEL, assert_parity, parallel_worker, reference

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo multiprocess tests run on Linux")


@pytest.mark.parametrize("sp", [pytest.param(False, marks=pytest.mark.slow), True], ids=["tp", "tp+sp"])
def test_tensor_parallel_two_processes_match_one(sp):
    results = run_ranks(parallel_worker, 2, ({"tp": 2, "sequence_parallel": sp}, {}))
    assert results[0]["dims"] == {"tp": 2}
    assert_parity(results, reference())
    # Megatron's per-block count: 2 all-reduces of the (B, T, D) activations forward and 2 backward; sequence
    # parallel turns each into an all-gather + a reduce-scatter of the same size (Korthikanti et al. 2022).
    # Around the blocks: the embedding's partial rows (forward), the head's input (backward; SP: both ways)
    # and the gathered (B, T, V) logits.
    btd = BATCH * 16 * MODEL["d_model"]
    btv = BATCH * 16 * MODEL["vocab_size"]
    layers = MODEL["n_layers"]
    if sp:
        want = {
            "forward": {"all_gather": (2 * layers + 1) * btd + btv, "reduce_scatter": (2 * layers + 1) * btd},
            "backward": {"all_gather": (2 * layers + 1) * btd, "reduce_scatter": (2 * layers + 1) * btd},
        }
    else:
        want = {
            "forward": {"all_reduce": (2 * layers + 1) * btd, "all_gather": btv},
            "backward": {"all_reduce": (2 * layers + 1) * btd},
        }
    assert results[0]["comm"] == want


@pytest.mark.slow
def test_fsdp_x_tp_four_processes_match_one():
    results = run_ranks(parallel_worker, 4, ({"dp_shard": 2, "tp": 2}, {}))
    assert results[0]["dims"] == {"dp_shard": 2, "tp": 2}
    assert_parity(results, reference())


def _vocab_parallel_worker(rank: int, world: int) -> dict:
    import torch
    import torch.distributed as dist

    from scratchlm.distributed.loss_parallel import VocabShard

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 12, generator=g) * 4  # (B, T, V): every rank draws the same full logits
    targets = torch.randint(0, 12, (3, 5), generator=g)
    targets[0, :2] = -100  # ignored tokens
    per = 12 // world
    local = logits[..., rank * per : (rank + 1) * per].clone().requires_grad_(True)
    shard = VocabShard(dist.group.WORLD, rank * per)
    loss = shard.cross_entropy(local, targets)
    loss.backward()
    total = shard.cross_entropy(local.detach(), targets, reduction="sum")
    return {"loss": loss.detach(), "sum": total, "grad": local.grad, "logits": logits, "targets": targets}


def test_vocab_parallel_cross_entropy_equals_torch_on_gathered_logits():
    import torch
    import torch.nn.functional as F

    results = run_ranks(_vocab_parallel_worker, 2)
    full = results[0]["logits"].clone().requires_grad_(True)
    targets = results[0]["targets"]
    want = F.cross_entropy(full.flatten(0, 1), targets.flatten())
    want.backward()
    grad = torch.cat([r["grad"] for r in results], -1)  # each rank's slice of the vocabulary, side by side
    for r in results:
        torch.testing.assert_close(r["loss"], want.detach(), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(r["sum"], want.detach() * (targets != -100).sum(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(grad, full.grad, atol=1e-7, rtol=1e-5)
    assert grad[0, :2].abs().sum() == 0  # ignored tokens get no gradient


def test_loss_parallel_trains_like_one_process():
    results = run_ranks(parallel_worker, 2, ({"tp": 2, "loss_parallel": True}, {}))
    assert_parity(results, reference())
    # the (B, T, V) logits are never gathered: only the blocks' traffic is left in the forward
    btd = BATCH * 16 * MODEL["d_model"]
    assert results[0]["comm"]["forward"] == {
        "all_gather": (2 * MODEL["n_layers"] + 1) * btd,
        "reduce_scatter": (2 * MODEL["n_layers"] + 1) * btd,
    }
