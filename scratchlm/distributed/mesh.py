"""Where this process sits in a run: device, rank and the parallel dimensions (the device mesh).

    dims = ParallelDims.from_config(cfg.parallel, world)   # sizes checked against the world and the model
    mesh = init_distributed(cfg)         # one process, or one process of a `torchrun` launch
    mesh.device, mesh.rank, mesh.world   # cuda:<local rank> / cpu, global rank, number of processes
    mesh.dp_rank, mesh.dims.dp           # which slice of the global batch this process trains on
    mesh.device_mesh                     # torch DeviceMesh over the dims > 1 (built on first use), None alone
    mesh.device_mesh["tp"]               # a named sub-mesh; "dp" / "dp_shard_cp" are flattened ones

The dims (torchtitan's `ParallelDims`): pp (pipeline stages), dp_replicate (DDP / HSDP replicas),
dp_shard (FSDP2 shards), cp (context parallel), tp (tensor parallel). Ranks are laid out row-major
over `ParallelDims.ORDER`, pp outermost and tp innermost, so that the chattiest dim (tp) spans
neighbouring ranks (one node). A layout that cannot work is refused by `check_layout` with a one-line
error before any process group exists.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from scratchlm.errors import ScratchLMError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from scratchlm.model.config import ModelConfig
    from scratchlm.train.config import ParallelConfig, TrainConfig


@dataclass(frozen=True)
class ParallelDims:
    """Sizes of the parallel dimensions; their product is the number of processes."""

    ORDER = ("pp", "dp_replicate", "dp_shard", "cp", "tp")  # mesh dims, outermost first

    dp_replicate: int = 1  # data parallel replicas (DDP; HSDP with dp_shard > 1): each on its slice of the batch
    dp_shard: int = 1  # FSDP2: parameters, gradients and optimizer state sharded; each on its slice of the batch
    cp: int = 1  # context parallel: the sequence split over ranks (ring attention)
    tp: int = 1  # tensor parallel: attention heads and MLP columns split over ranks
    pp: int = 1  # pipeline parallel: layers split into stages

    def __post_init__(self) -> None:
        for name in self.ORDER:
            if getattr(self, name) < 1:
                raise ScratchLMError(f"parallel dim {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, p: ParallelConfig, world: int) -> ParallelDims:
        """The dims of `p` for `world` processes: a -1 dim takes the processes the others leave (dp_shard
        first; dp_replicate = -1, the default, gives them to DDP replicas as before the parallel section)."""
        fixed = {"cp": p.cp, "tp": p.tp, "pp": p.pp}
        for name, value in {**fixed, "dp_replicate": p.dp_replicate, "dp_shard": p.dp_shard}.items():
            if value == 0 or value < -1 or (value == -1 and name in fixed):
                raise ScratchLMError(f"parallel.{name} must be >= 1{'' if name in fixed else ' or -1'}, got {value}")
        shard, repl = p.dp_shard, p.dp_replicate
        if shard == -1:
            repl = 1 if repl == -1 else repl
        known = p.cp * p.tp * p.pp * max(shard, 1) * max(repl, 1)
        if world % known:
            raise ScratchLMError(
                f"parallel layout {_layout(p)} needs a multiple of {known} processes, world size is {world}"
            )
        if shard == -1:
            shard = world // known
        elif repl == -1:
            repl = world // known
        dims = cls(dp_replicate=repl, dp_shard=shard, cp=p.cp, tp=p.tp, pp=p.pp)
        if dims.world != world:
            raise ScratchLMError(
                f"parallel layout {dims.describe()} needs {dims.world} processes, world size is {world}"
            )
        return dims

    @property
    def world(self) -> int:
        return self.pp * self.dp_replicate * self.dp_shard * self.cp * self.tp

    @property
    def dp(self) -> int:
        """Data-parallel degree: how many slices the global batch is split into (replicas x shards)."""
        return self.dp_replicate * self.dp_shard

    @property
    def enabled(self) -> dict[str, int]:
        """{name: size} of the dims > 1, outermost first (the shape of the device mesh)."""
        return {n: getattr(self, n) for n in self.ORDER if getattr(self, n) > 1}

    def describe(self) -> str:
        return " x ".join(f"{n}={s}" for n, s in self.enabled.items()) or "single process"


def _layout(p) -> str:
    return ", ".join(f"{n}={getattr(p, n)}" for n in ("dp_replicate", "dp_shard", "cp", "tp", "pp"))


def check_layout(dims: ParallelDims, model: ModelConfig, seq_len: int) -> None:
    """Refuse a layout that does not divide the model or the sequence, with a one-line error naming both numbers.
    Called before any process group work (Trainer, `parallelize`)."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ScratchLMError(f"parallel layout {dims.describe()}: {msg}")

    tp = dims.tp
    if tp > 1:
        need(model.n_heads % tp == 0, f"model.n_heads={model.n_heads} is not divisible by tp={tp}")
        need(model.kv_heads % tp == 0, f"model.n_kv_heads={model.kv_heads} is not divisible by tp={tp}")
        need(model.ff_dim % tp == 0, f"model.d_ff={model.ff_dim} is not divisible by tp={tp}")
        need(model.vocab_size % tp == 0, f"model.vocab_size={model.vocab_size} is not divisible by tp={tp}")
        need(model.attention == "softmax", f"tensor parallel shards softmax attention, not {model.attention!r}")
        need(model.moe.num_experts == 0, "tensor parallel of MoE layers is not supported (use dp_shard / dp_replicate)")
        need(not model.qk_norm, "tensor parallel with qk_norm is not supported")
        need(not model.fused_loss, "tensor parallel needs the logits: turn model.fused_loss off")
        need(model.ops == "torch", f"tensor parallel needs model.ops='torch', got {model.ops!r}")
    need(model.n_layers % dims.pp == 0, f"model.n_layers={model.n_layers} is not divisible by pp={dims.pp}")
    if dims.cp > 1:
        need(
            seq_len % (2 * dims.cp) == 0,
            f"seq_len={seq_len} is not divisible by 2*cp={2 * dims.cp} (load-balanced causal shards)",
        )
        need(model.attention == "softmax", f"context parallel rings softmax attention, not {model.attention!r}")
        need(
            set(model.layer_pattern) == {"L"},
            f"context parallel needs full-attention layers only, got layer_pattern={model.layer_pattern!r}",
        )
        need(model.dropout_attn == 0, "context parallel: ring attention has no attention dropout (dropout_attn = 0)")


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
        """Index of this process's batch slice over dp_replicate x dp_shard (row-major layout: cp and tp
        ranks inside, which see the same rows)."""
        inner = self.dims.cp * self.dims.tp
        return (self.rank // inner) % self.dims.dp

    @cached_property
    def device_mesh(self) -> DeviceMesh | None:
        """torch's DeviceMesh over the enabled dims (needs the process group); None for one process.
        Flattened sub-meshes: "dp" (dp_replicate x dp_shard: the batch split, loss mean) and "dp_shard_cp"
        (dp_shard x cp: what FSDP shards over, as torchtitan)."""
        if self.world == 1:
            return None
        from torch.distributed.device_mesh import init_device_mesh

        shape = self.dims.enabled
        mesh = init_device_mesh(self.device.type, tuple(shape.values()), mesh_dim_names=tuple(shape))
        for flat, parts in (("dp", ("dp_replicate", "dp_shard")), ("dp_shard_cp", ("dp_shard", "cp"))):
            names = tuple(n for n in parts if n in shape)
            if len(names) > 1:
                mesh[names]._flatten(flat)
        return mesh

    def sub_mesh(self, *names: str) -> DeviceMesh | None:
        """The sub-mesh over the enabled dims among `names` (a flattened one when several), None if none is."""
        mesh = self.device_mesh
        if mesh is None:
            return None
        have = [n for n in names if n in self.dims.enabled]
        if not have:
            return None
        if len(have) == 1:
            return mesh[have[0]]
        flat = {("dp_replicate", "dp_shard"): "dp", ("dp_shard", "cp"): "dp_shard_cp"}[tuple(have)]
        return mesh[flat]


def resolve_device(name: str) -> torch.device:
    """The device named `name`: "auto" = cuda if available, else cpu; cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ScratchLMError(f"device {name!r} asked for, but no CUDA GPU is available")
    return torch.device(name)


def init_distributed(cfg: TrainConfig, dims: ParallelDims | None = None, timeout_s: float | None = None) -> Mesh:
    """Single process, or join the process group of a `torchrun` launch (gloo on CPU, NCCL on GPU).

    `dims` default: from `cfg.parallel` and WORLD_SIZE, checked against the model (`check_layout`) before the
    process group is joined. `timeout_s` (default cfg.parallel.timeout_s): how long a collective waits for a
    rank that died or hangs before it raises, so that the others exit instead of waiting forever."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dims is None:
        dims = ParallelDims.from_config(cfg.parallel, world)
        check_layout(dims, cfg.model, cfg.context)
        if dims.pp > 1:  # the Trainer runs the stages through distributed/pipeline_train.py
            from scratchlm.distributed.pipeline_train import check_pipeline_config

            check_pipeline_config(cfg)
    if dims.world != world:
        raise ScratchLMError(f"parallel dims {dims} need {dims.world} processes, but WORLD_SIZE is {world}")
    device = resolve_device(cfg.device)
    if world == 1:
        return Mesh(device, dims)
    if not dist.is_initialized():
        from datetime import timedelta

        timeout = timedelta(seconds=timeout_s or cfg.parallel.timeout_s)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Mesh(device, dims, dist.get_rank())


@contextmanager
def peer_failures(timeout_s: float):
    """Turn the error a collective raises when another process died (its connection closed) or stopped
    answering (the process group's timeout, `timeout_s`) into one clear ScratchLMError, so that the surviving
    ranks exit with a message instead of a backend traceback (or a hang: the timeout bounds the wait)."""
    try:
        yield
    except (RuntimeError, dist.DistError) as e:
        if not dist.is_initialized() or isinstance(e, ScratchLMError):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ScratchLMError(
            f"rank {dist.get_rank()}: a collective failed ({first}): another process died or did not answer "
            f"within parallel.timeout_s = {timeout_s:g} s; stopping this one too"
        ) from e


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
