"""`parallelize(model, cfg, mesh)`: everything that changes how a single-device model runs, applied from
outside the model, in torchtitan's order:

    1. tensor parallel               (the parallelism issue adds it here; tp > 1 is refused for now)
    2. activation checkpointing      (cfg.activation_checkpointing: each block recomputed in the backward)
    3. torch.compile                 (cfg.compile)
    4. data parallel: DDP            (more than one process)

    model = TransformerLM(cfg.model)
    fwd_model = parallelize(model, cfg, mesh)     # run forward/backward through fwd_model
    optimizer = build_optimizer(model, cfg.optim)   # the plain model: its parameters, roles, state_dict

Activation checkpointing wraps the blocks in place (the plain model then recomputes too; parameter
names gain a `_checkpoint_wrapped_module.` part but state_dict keys do not: torch's wrapper strips it).
Compile and DDP return wrappers around the model; `unwrap_model` gets the plain model back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper, checkpoint_wrapper

from scratchlm.distributed.ddp import wrap_ddp
from scratchlm.errors import ScratchLMError

if TYPE_CHECKING:
    from scratchlm.distributed.mesh import Mesh
    from scratchlm.train.config import TrainConfig


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile (`_orig_mod`) and DDP (`module`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Wrap every block of `model.blocks` (ModuleDict or ModuleList) so that its activations are not kept
    for the backward but recomputed from the block's input (Chen et al. 2016, "Training Deep Nets with
    Sublinear Memory Cost"): memory per layer drops to the residual stream, for about one more forward.

    Non-reentrant torch checkpointing; the RNG state is restored for the recomputation, so dropout masks
    (and thus losses and gradients) equal the unwrapped model's. In place; returns `model`."""
    for name, block in list(model.blocks.named_children()):
        if not isinstance(block, CheckpointWrapper):
            model.blocks.register_module(name, checkpoint_wrapper(block))
    return model


def apply_compile(module: nn.Module, backend: str = "inductor") -> nn.Module:
    """torch.compile the whole module (a wrapper; the module itself stays eager for evaluation and sampling,
    whose cached generation steps would recompile at every length)."""
    return torch.compile(module, backend=backend)


def parallelize(model: nn.Module, cfg: TrainConfig, mesh: Mesh, compile_backend: str = "inductor") -> nn.Module:
    """Apply tensor parallel (not yet), activation checkpointing, compile and DDP per `cfg` and `mesh`, in
    that order; returns the module to run forward and backward through (`model` itself when none applies).

    `compile_backend`: torch.compile's backend ("aot_eager" compiles in seconds on CPU: tests)."""
    if mesh.dims.tp > 1:
        # The parallelism issue applies the tensor-parallel plan here, before anything wraps the blocks.
        raise ScratchLMError(f"tensor parallel (tp = {mesh.dims.tp}) is not implemented yet: run with tp = 1")
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    fwd_model = apply_compile(model, compile_backend) if cfg.compile else model
    if mesh.dims.dp > 1:
        fwd_model = wrap_ddp(fwd_model, mesh.device)
    return fwd_model
