"""`parallelize(model, cfg, mesh)`: everything that changes how a single-device model runs, applied from
outside the model, in torchtitan's order:

    1. tensor parallel (+ sequence parallel)   mesh.dims.tp > 1           (tensor_parallel.py)
    2. context parallel                        mesh.dims.cp > 1           (ring_attention.py: swaps `attend`)
    3. activation checkpointing                cfg.checkpointing: none | full (per block) | selective
    4. torch.compile                           cfg.compile
    5. data parallel: FSDP2 / HSDP             dp_shard > 1 (or tp > 1 with data parallel)   (fsdp.py)
       or DDP                                  dp_replicate > 1 alone                        (ddp.py)

With pp > 1 only activation checkpointing and per-block compile apply here; the Trainer runs the stages
through `distributed/pipeline_train.py`.

    model = TransformerLM(cfg.model)
    fwd_model = parallelize(model, cfg, mesh)     # run forward/backward through fwd_model
    optimizer = build_optimizer(model, cfg.optim)   # the plain model: its parameters, roles, state_dict

Activation checkpointing wraps the blocks in place (the plain model then recomputes too; parameter
names gain a `_checkpoint_wrapped_module.` part but state_dict keys do not: torch's wrapper strips it).
Selective checkpointing keeps the outputs of matmuls and attention (the expensive ops) and recomputes the
cheap elementwise rest (norms, activations, RoPE), as torchtitan's "op" policy does.
Alone, compile and DDP return wrappers around the model; `unwrap_model` gets the plain model back. With
tensor parallel or FSDP each block is compiled in place (`Module.compile`) and FSDP changes the model's
class in place: the model itself runs forward and backward and its parameters are DTensors.
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


# ops whose outputs selective checkpointing keeps: matmuls and attention (recomputing them costs the most FLOPs)
_SAVE_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.linear.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _selective_policy(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_selective_policy)


def apply_activation_checkpointing(model: nn.Module, mode: str = "full") -> nn.Module:
    """Wrap every block of `model.blocks` (ModuleDict or ModuleList) so that its activations are not kept
    for the backward but recomputed from the block's input (Chen et al. 2016, "Training Deep Nets with
    Sublinear Memory Cost"): memory per layer drops to the residual stream, for about one more forward.
    mode "selective": the matmul and attention outputs are kept, only the rest is recomputed.

    Non-reentrant torch checkpointing; the RNG state is restored for the recomputation, so dropout masks
    (and thus losses and gradients) equal the unwrapped model's. In place; returns `model`."""
    if mode not in ("full", "selective"):
        raise ScratchLMError(f"activation checkpointing mode must be none, full or selective, got {mode!r}")
    kwargs = {"context_fn": _selective_context} if mode == "selective" else {}
    for name, block in list(model.blocks.named_children()):
        if not isinstance(block, CheckpointWrapper):
            model.blocks.register_module(name, checkpoint_wrapper(block, **kwargs))
    return model


def apply_compile(module: nn.Module, backend: str = "inductor") -> nn.Module:
    """torch.compile the whole module (a wrapper; the module itself stays eager for evaluation and sampling,
    whose cached generation steps would recompile at every length)."""
    return torch.compile(module, backend=backend)


def apply_context_parallel_from_helper(model: nn.Module, mesh: Mesh) -> None:
    try:
        from scratchlm.distributed.ring_attention import apply_context_parallel
    except ImportError as e:
        raise ScratchLMError(f"context parallel (cp = {mesh.dims.cp}) is not available: {e}") from e
    apply_context_parallel(model, mesh.sub_mesh("cp"))


def _dtype(name: str, precision: str) -> torch.dtype:
    if name == "auto":
        name = "bf16" if precision == "bf16" else "fp32"
    return torch.bfloat16 if name == "bf16" else torch.float32


def parallelize(model: nn.Module, cfg: TrainConfig, mesh: Mesh, compile_backend: str = "inductor") -> nn.Module:
    """Apply tensor / context parallel, activation checkpointing, compile and FSDP2 or DDP per `cfg` and
    `mesh`, in that order; returns the module to run forward and backward through (`model` itself unless
    compile or DDP wrap it).

    `compile_backend`: torch.compile's backend ("aot_eager" compiles in seconds on CPU: tests)."""
    from scratchlm.distributed.mesh import check_layout

    dims = mesh.dims
    check_layout(dims, cfg.model, cfg.context)
    if dims.pp > 1:  # the stages run through distributed/pipeline_train.py: only what acts on blocks in place
        if cfg.checkpointing != "none":
            apply_activation_checkpointing(model, cfg.checkpointing)
        if cfg.compile:
            for block in model.blocks.values():
                block.compile(backend=compile_backend)
        return model
    # the parameters become DTensors: per-block compile, FSDP not DDP. Context parallel ranks hold the same weights
    # but other tokens: FSDP shards over dp_shard x cp (torchtitan's dp_shard_cp), which also averages their grads
    sharded = dims.dp_shard > 1 or dims.tp > 1 or dims.cp > 1
    if dims.tp > 1:
        from scratchlm.distributed.tensor_parallel import apply_tensor_parallel

        p = cfg.parallel
        apply_tensor_parallel(model, mesh.sub_mesh("tp"), p.sequence_parallel, p.loss_parallel)
    if dims.cp > 1:
        apply_context_parallel_from_helper(model, mesh)
    if cfg.checkpointing != "none":
        apply_activation_checkpointing(model, cfg.checkpointing)
    fwd_model = model
    if cfg.compile:
        if sharded:  # per block, in place: FSDP's hooks stay outside the graphs, names unchanged
            for block in model.blocks.values():
                block.compile(backend=compile_backend)
        else:
            fwd_model = apply_compile(model, compile_backend)
    if sharded and dims.dp * dims.cp > 1:
        from scratchlm.distributed.fsdp import apply_fsdp

        shard = mesh.sub_mesh("dp_shard", "cp")
        if dims.dp_replicate > 1 and shard is not None:  # HSDP: replicate over dim 0, shard over dim 1
            dp_mesh = mesh.device_mesh["dp_replicate", shard.mesh_dim_names[0]]
        else:
            dp_mesh = shard if shard is not None else mesh.sub_mesh("dp_replicate")
        p = cfg.parallel
        apply_fsdp(model, dp_mesh, _dtype(p.param_dtype, cfg.precision), _dtype(p.reduce_dtype, cfg.precision))
    elif dims.dp > 1:
        fwd_model = wrap_ddp(fwd_model, mesh.device)
    return fwd_model


def is_sharded(model: nn.Module) -> bool:
    """Whether `model`'s parameters are DTensors (tensor parallel or FSDP2): its state needs collectives."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in unwrap_model(model).parameters())
