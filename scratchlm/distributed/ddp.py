"""Data parallel with torch DDP, for processes started by `torchrun` (gloo on CPU, NCCL on GPU).

    torchrun --nproc_per_node 2 -m scratchlm train --preset quickstart

Each process draws the same global batch of windows and trains on its slice (train/trainer.py), DDP
averages the gradients, so N processes with per-process batch B follow the same trajectory as one
process with batch N * B (tested: 2 gloo processes == 1 process). `parallelize` applies `wrap_ddp`
last, around the (compiled) model.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def wrap_ddp(module: nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP around `module` (the model, or its compiled wrapper).

    `find_unused_parameters` stays off: every parameter of a `TransformerLM` takes part in every step,
    MoE included (the experts are stacked (E, out, in) tensors, used as soon as any token is routed),
    so DDP needs no graph walk per step, and the head weight may be read outside DDP's forward (a fused
    head + loss on the hidden states)."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=False)


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a Python number over the processes (the number itself when not distributed)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()
