"""The mesh: explicit parallel dims, the rank layout, and one process without torchrun."""

from __future__ import annotations

import pytest
import torch

from scratchlm.distributed.mesh import Mesh, ParallelDims, init_distributed
from scratchlm.errors import ScratchLMError
from scratchlm.train.config import TrainConfig


def test_dims_and_rank_layout():
    dims = ParallelDims(dp_replicate=2, tp=3)
    assert dims.world == 6 and dims.enabled == {"dp_replicate": 2, "tp": 3}
    assert ParallelDims(dp_shard=4).enabled == {"dp_shard": 4} and ParallelDims().enabled == {}
    # row-major, dp outermost: ranks 0-2 are replica 0, ranks 3-5 replica 1
    assert [Mesh(torch.device("cpu"), dims, r).dp_rank for r in range(6)] == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ScratchLMError, match="tp must be >= 1"):
        ParallelDims(tp=0)


def test_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    mesh = init_distributed(TrainConfig(device="cpu"))
    assert (mesh.world, mesh.rank, mesh.main, mesh.dp_rank, mesh.device) == (1, 0, True, 0, torch.device("cpu"))
    assert mesh.device_mesh is None
    with pytest.raises(ScratchLMError, match="need 2 processes"):
        init_distributed(TrainConfig(device="cpu"), ParallelDims(dp_replicate=2))
