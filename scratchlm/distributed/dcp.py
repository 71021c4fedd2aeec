"""Checkpoints of sharded runs (FSDP2 / tensor parallel: DTensor parameters and optimizer state).

    model_sd, optim_sd = full_state(model, optimizer)          # collective: the unsharded state, on CPU
    load_full_state(model, optimizer, model_sd, optim_sd)      # any layout (1 process included) reshards it
    save_sharded(path, model, optimizer)                       # torch.distributed.checkpoint: each rank its shards
    load_sharded(path, model, optimizer)                       # into any layout: DCP reshards on load
    sharded_to_safetensors(path, "model.safetensors")          # one process, no process group

Two formats. The run directory's checkpoints stay the single-file ones the rest of the toolkit reads
(train/checkpoint.py: model.safetensors + state.pt): a sharded run gathers the full state (`full_state`,
offloaded to CPU) and rank 0 writes it (`ShardedTrainState`). The optimizer state is kept in the
plain optimizer's format (keyed by parameter index), so a run saved under FSDP x TP resumes in one
process and the reverse. `save_sharded` writes torch's distributed checkpoint (one file per rank, no
gather: for models too large for one host), readable back by any layout and convertible to safetensors.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from scratchlm.errors import ScratchLMError
from scratchlm.train.state import TrainState

WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "module.")


def _clean(name: str) -> str:
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The clean name of every optimizer parameter, in the optimizer's own order (its state_dict indices)."""
    names = {id(p): _clean(n) for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, rank0_only: bool = True
) -> tuple[dict, dict | None]:
    """(model state_dict, optimizer state_dict) unsharded, in the plain formats (optimizer keyed by parameter
    index as `optimizer.state_dict()`). A collective under a process group: every rank calls it. `rank0_only`:
    offloaded to CPU on rank 0, the other ranks get ({}, None) (a host holds one copy); else every rank gets
    them on the parameters' device."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
    model_sd = get_model_state_dict(model, options=options)
    if optimizer is None:
        return model_sd, None
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if not by_name:  # not rank 0 of an offloaded gather
        return model_sd, None
    index = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]
    return model_sd, {"state": {index[n]: s for n, s in by_name["state"].items()}, "param_groups": groups}


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict, optim_sd: dict | None
) -> None:
    """Load unsharded states (as `full_state` or a single-process run wrote them) into a model of any layout;
    every rank passes the full states."""
    # copies of the dicts: torch replaces their values by this layout's shards in place
    set_model_state_dict(model, dict(model_sd), options=StateDictOptions(full_state_dict=True, strict=True))
    if optimizer is None or optim_sd is None:
        return
    names = _param_names(model, optimizer)
    if len(names) != sum(len(g["params"]) for g in optim_sd["param_groups"]):
        raise ScratchLMError("the saved optimizer state has another number of parameters than this model")
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in optim_sd["param_groups"]]
    by_name = {"state": {names[i]: dict(s) for i, s in optim_sd["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


class ShardedTrainState(TrainState):
    """A TrainState whose model is sharded: `gather()` (every rank) before rank 0 saves it with the usual
    checkpoint functions; loading takes the full states on every rank and reshards them."""

    _gathered: tuple[dict, dict | None] | None = None

    def gather(self) -> None:
        self._gathered = full_state(self.model, self.optimizer)

    def state_dict(self, rng: bool = True) -> dict[str, Any]:
        if self._gathered is None:
            raise ScratchLMError("a sharded train state must be gathered on every rank (gather()) before saving")
        model_sd, optim_sd = self._gathered
        self._gathered = None
        out = {"step": self.step, "model": model_sd, "optimizer": optim_sd, "schedule": self.schedule.state_dict()}
        out.update(data=self.loader.state_dict(), metrics=self.bookkeeping())
        if rng:
            from scratchlm.train.state import rng_state

            out["rng"] = rng_state()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "model" in state:
            load_full_state(self.model, self.optimizer, state["model"], state.get("optimizer"))
        rest = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
        optimizer, self.optimizer = self.optimizer, _Loaded()
        try:
            super().load_state_dict(rest | {"optimizer": {}})
        finally:
            self.optimizer = optimizer


class _Loaded:
    """Stands for the optimizer already restored by `load_full_state` while TrainState restores the rest."""

    def load_state_dict(self, state) -> None:
        pass


def save_sharded(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Path:
    """torch.distributed.checkpoint of the model (and optimizer) state: each rank writes its own shards.
    Written under a temp name and renamed by rank 0 once every rank is done (a crash leaves no half checkpoint)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0 and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    dcp.save(state, checkpoint_id=str(tmp))
    _barrier()
    if rank0:
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    _barrier()
    return path


def load_sharded(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load a `save_sharded` checkpoint into `model` (and `optimizer`) of any layout: DCP reads each rank's
    part of every tensor from whatever shards hold it."""
    path = Path(path)
    if not (path / ".metadata").exists():
        raise ScratchLMError(f"{path} is not a distributed checkpoint (no .metadata)")
    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])


def sharded_to_safetensors(path: str | Path, out: str | Path) -> Path:
    """The model weights of a `save_sharded` checkpoint as one safetensors file (tied weights stored once,
    as model.safetensors of train/checkpoint.py); one process, no process group, no model needed."""
    import json

    from safetensors.torch import save

    from scratchlm.io import atomic_write
    from scratchlm.train.checkpoint import split_tied

    reader = dcp.FileSystemReader(str(path))
    meta = reader.read_metadata().state_dict_metadata
    state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items() if k.startswith("model.")}
    if not state:
        raise ScratchLMError(f"{path} holds no model weights")
    dcp.load(state, storage_reader=reader, no_dist=True)
    weights = {k.removeprefix("model."): v for k, v in state.items()}
    for alias, name in (("head.weight", "embed.weight"),):  # DCP stores a tied pair twice: keep it once again
        if alias in weights and name in weights and torch.equal(weights[alias], weights[name]):
            weights[alias] = weights[name]
    tensors, aliases = split_tied(weights)
    out = Path(out)
    with atomic_write(out, "wb") as f:
        f.write(save(tensors, metadata={"format": "scratchlm-checkpoint", "aliases": json.dumps(aliases)}))
    return out


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
