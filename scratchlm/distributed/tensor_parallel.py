"""Tensor parallel (Megatron-LM, Shoeybi et al. 2019) and sequence parallel (Korthikanti et al. 2022) plans
for a `TransformerLM`, applied with torch's `parallelize_module` over the "tp" mesh.

    apply_tensor_parallel(model, tp_mesh, sequence_parallel=True)

Per block: q/k/v and gate/up are column-parallel (each rank computes H/tp heads and F/tp hidden units, no
communication), o and down row-parallel (partial sums reduced). The attention module's head counts are
set to the local ones, so its `view(B, T, heads, Dh)` sees its share. The embedding is row-parallel over
the vocabulary and the head column-parallel over it (tied weights: both Shard(0), still one tensor); the
head's logits are gathered (Replicate), so the losses stay unchanged; with `loss_parallel=True` they stay
sharded over the vocabulary and the loss reduces them in place (loss_parallel.py: three (B, T) all-reduces
instead of gathering (B, T, V)).

Without sequence parallel the residual stream is replicated: two all-reduces per block forward (after o and
after down) and two backward. With it (default) the residual stream, norms and dropout are sharded along
the sequence (Shard(1)): the all-reduces become a reduce-scatter after o / down plus an all-gather before
q/k/v and gate/up (the same bytes), and norm activations take 1/tp of the memory.
"""

from __future__ import annotations

import functools

import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from scratchlm.errors import ScratchLMError


def _sharded_lookup(embed: nn.Module, ids: Tensor) -> Tensor:
    out = F.embedding(ids, embed.weight)  # (B, T, D)
    scale = getattr(embed, "scale", None)  # ScaledEmbedding: rows times sqrt(D)
    return out if scale is None else out * float(scale)


def apply_tensor_parallel(
    model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool = True, loss_parallel: bool = False
) -> nn.Module:
    """Shard `model` (a `TransformerLM`, before any wrapper) over `tp_mesh` in place; returns it.
    loss_parallel: the model returns this rank's logits (B, T, V / tp) and `model.vocab_parallel` says which."""
    tp = tp_mesh.size()
    cfg = model.config
    if sequence_parallel and model.pos_embed is not None:
        raise ScratchLMError("sequence parallel needs positions rope or none (the learned table is added to full rows)")
    seq = Shard(1) if sequence_parallel else Replicate()
    tied = cfg.tie_embeddings and model.head.weight is model.embed.weight
    root_plan = {
        # rows of the vocabulary per rank; the partial sums reduced (SP: scattered along the sequence)
        "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=seq),
        "head": ColwiseParallel(input_layouts=seq, output_layouts=Shard(-1) if loss_parallel else Replicate()),
    }
    if sequence_parallel and not isinstance(model.norm, nn.Identity):
        root_plan["norm"] = SequenceParallel(use_local_output=True)
    # F.embedding on the vocab-sharded table: each rank looks up the rows it holds (zeros elsewhere) and one
    # all-reduce / reduce-scatter of (B, T, D) completes them; the model's own index_select would make DTensor
    # all-gather the whole (V, D) table every step
    model.embed.forward = functools.partial(_sharded_lookup, model.embed)
    parallelize_module(model, tp_mesh, root_plan)
    if tied:  # both Shard(0) over the vocabulary: one parameter again
        model.head.weight = model.embed.weight
    if loss_parallel:
        from scratchlm.distributed.loss_parallel import VocabShard

        model.vocab_parallel = VocabShard(tp_mesh.get_group(), tp_mesh.get_local_rank() * (cfg.vocab_size // tp))
    for block in model.blocks.values():
        attn, mlp = block.mixer, block.mlp
        attn.n_heads //= tp  # local heads: the projections' outputs are this rank's heads only
        attn.kv_heads //= tp
        plan: dict[str, object] = {
            "attn.f": PrepareModuleInput(input_layouts=(seq, None), desired_input_layouts=(Replicate(), None)),
            "attn.f.q_proj": ColwiseParallel(),
            "attn.f.k_proj": ColwiseParallel(),
            "attn.f.v_proj": ColwiseParallel(),
            "attn.f.o_proj": RowwiseParallel(output_layouts=seq),
            "ffn.f": PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),)),
            "ffn.f.up": ColwiseParallel(),
            "ffn.f.down": RowwiseParallel(output_layouts=seq),
        }
        if hasattr(mlp, "gate"):
            plan["ffn.f.gate"] = ColwiseParallel()
        if sequence_parallel:
            for residual in (block.attn, block.ffn):
                for norm in ("norm_in", "norm_mid", "norm_out"):
                    if not isinstance(getattr(residual, norm), nn.Identity):
                        plan[f"{'attn' if residual is block.attn else 'ffn'}.{norm}"] = SequenceParallel(
                            use_local_output=True
                        )
        parallelize_module(block, tp_mesh, plan)
    return model
