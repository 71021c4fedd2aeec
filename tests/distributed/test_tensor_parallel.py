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
