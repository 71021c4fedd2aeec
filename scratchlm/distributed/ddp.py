"""Data parallel with torch DDP, for processes started by `torchrun` (gloo on CPU, NCCL on GPU).

    torchrun --nproc_per_node 2 -m scratchlm train --preset quickstart

Each process draws the same global batch of windows and trains on its slice (see train/loop.py),
DDP averages the gradients, so N processes with per-process batch B follow the same trajectory as
one process with batch N * B (tested: 2 gloo processes == 1 process).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def init_process_group(device: torch.device) -> tuple[int, int]:
    """Join the process group described by torchrun's environment; returns (rank, local_rank)."""
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    ids = [device.index] if device.type == "cuda" else None
    # Parameters unused in a step (e.g. an MoE expert that got no token) must not hang the all-reduce.
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=_has_moe(model))


def _has_moe(model: torch.nn.Module) -> bool:
    return model.config.moe.num_experts > 0


def all_reduce_mean(value: float, device: torch.device) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
