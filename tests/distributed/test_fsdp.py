"""FSDP2 (`fully_shard` per block then the root) on 2 gloo processes trains like 1 process on the same
global batch: losses and parameters after 3 AdamW steps (clipping on) equal within fp32 tolerance (parity.TOL)."""

from __future__ import annotations

import sys

import pytest
from multiproc import run_ranks
from parity import assert_parity, parallel_worker, reference

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo multiprocess tests run on Linux")


def test_fsdp2_two_processes_match_one():
    results = run_ranks(parallel_worker, 2, ({"dp_shard": -1}, {}))
    assert results[0]["dims"] == {"dp_shard": 2}
    assert_parity(results, reference())


@pytest.mark.slow
def test_hsdp_four_processes_match_one():
    """dp_replicate=2 x dp_shard=2: shards within a pair, gradients all-reduced between the pairs."""
    results = run_ranks(parallel_worker, 4, ({"dp_replicate": 2, "dp_shard": 2}, {}))
    assert results[0]["dims"] == {"dp_replicate": 2, "dp_shard": 2}
    assert_parity(results, reference())
