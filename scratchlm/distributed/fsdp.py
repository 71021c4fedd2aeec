"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer state sharded over the
data-parallel ranks (ZeRO-3, Rajbhandari et al. 2020); HSDP when replicated too.

    apply_fsdp(model, dp_mesh, param_dtype=torch.bfloat16, reduce_dtype=torch.float32)

Each block is its own unit (its parameters all-gathered just before its forward and freed after it,
gathered again for its backward, gradients reduce-scattered), then the root (embedding, final norm,
head). Every parameter becomes a DTensor sharded along dim 0; the optimizer built afterwards on
`model.parameters()` holds only this rank's shard of its state. A 2-D `dp_mesh` (dp_replicate,
dp_shard) replicates the shards over the first dim (HSDP: all-reduce between replicas).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def apply_fsdp(
    model: nn.Module,
    dp_mesh: DeviceMesh,
    param_dtype: torch.dtype = torch.float32,
    reduce_dtype: torch.dtype = torch.float32,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """fully_shard each block of `model.blocks`, then the root; in place, returns `model`."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    blocks = list(model.blocks.values())
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again at once by the backward: keep them gathered
        fully_shard(
            block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward and i < len(blocks) - 1
        )
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    return model
