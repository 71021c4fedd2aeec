"""Where this process sits in a run: device, rank and the parallel dimensions (the device mesh).

    mesh = init_distributed(cfg)         # one process, or one process of a `torchrun` launch
    mesh.device, mesh.rank, mesh.world   # cuda:<local rank> / cpu, global rank, number of processes
    mesh.dp_rank, mesh.dims.dp           # which slice of the global batch this process trains on
    mesh.device_mesh                     # torch DeviceMesh over the dims > 1 (built on first use), None alone

The dims are explicit (`ParallelDims`): data parallel only for now; the parallelism issue adds tensor,
pipeline and context parallel dims here and `parallelize` applies them. Ranks are laid out row-major
over the dims in the order of `ParallelDims.ORDER` (dp outermost), as torchtitan's `ParallelDims`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from scratchlm.errors import ScratchLMError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from scratchlm.train.config import TrainConfig


@dataclass(frozen=True)
class ParallelDims:
    """Sizes of the parallel dimensions; their product is the number of processes."""

    ORDER = ("dp", "tp")  # mesh dims, outermost first

    dp: int = 1  # data parallel: replicas of the model, each on its own slice of the batch
    tp: int = 1  # tensor parallel (not implemented yet: `parallelize` refuses tp > 1)

    def __post_init__(self) -> None:
        for name in self.ORDER:
            if getattr(self, name) < 1:
                raise ScratchLMError(f"parallel dim {name} must be >= 1, got {getattr(self, name)}")

    @property
    def world(self) -> int:
        return self.dp * self.tp

    @property
    def enabled(self) -> dict[str, int]:
        """{name: size} of the dims > 1, outermost first (the shape of the device mesh)."""
        return {n: getattr(self, n) for n in self.ORDER if getattr(self, n) > 1}


@dataclass
class Mesh:
    """Process-level facts of a run: its device, its global rank and the parallel dims."""

    device: torch.device
    dims: ParallelDims = field(default_factory=ParallelDims)
    rank: int = 0

    @property
    def world(self) -> int:
        return self.dims.world

    @property
    def main(self) -> bool:
        """Rank 0 writes the run directory, logs and checkpoints."""
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        """Index of this process's data-parallel replica (row-major rank layout, dp outermost)."""
        return self.rank // (self.world // self.dims.dp)

    @cached_property
    def device_mesh(self) -> DeviceMesh | None:
        """torch's DeviceMesh over the enabled dims (needs the process group); None for one process."""
        if self.world == 1:
            return None
        from torch.distributed.device_mesh import init_device_mesh

        shape = self.dims.enabled
        return init_device_mesh(self.device.type, tuple(shape.values()), mesh_dim_names=tuple(shape))


def resolve_device(name: str) -> torch.device:
    """The device named `name`: "auto" = cuda if available, else cpu; cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ScratchLMError(f"device {name!r} asked for, but no CUDA GPU is available")
    return torch.device(name)


def init_distributed(cfg: TrainConfig, dims: ParallelDims | None = None) -> Mesh:
    """Single process, or join the process group of a `torchrun` launch (gloo on CPU, NCCL on GPU).

    `dims` default: every process is a data-parallel replica (dp = WORLD_SIZE)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dims = dims or ParallelDims(dp=world)
    if dims.world != world:
        raise ScratchLMError(f"parallel dims {dims} need {dims.world} processes, but WORLD_SIZE is {world}")
    device = resolve_device(cfg.device)
    if world == 1:
        return Mesh(device, dims)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Mesh(device, dims, dist.get_rank())


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
