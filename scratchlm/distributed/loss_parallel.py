"""Loss parallel: the cross-entropy of vocabulary-sharded logits without gathering them (Megatron-LM's
vocab-parallel cross-entropy). Under tensor parallel the head is column-parallel over the vocabulary, so
each rank holds logits (B, T, V / tp) of its slice of the vocabulary; gathering them costs B*T*V elements
of traffic and a full (B, T, V) tensor per rank. Instead each rank reduces its slice to per-token numbers
and three all-reduces of (B, T) finish the softmax:

    m      = max over ranks of the local max              (all-reduce MAX; for a stable exp)
    Z      = sum over ranks of sum_v exp(logit_v - m)     (all-reduce SUM)
    target = the target's logit, from the rank holding it (all-reduce SUM of zeros elsewhere)
    loss   = m + log Z - target                           per token; mean over tokens != ignore_index

The backward needs no communication: d loss / d logit_v = softmax_v - [v == target], and each rank has
its slice of the softmax, exp(logit - m - log Z), from the saved log-sum-exp.

    shard = VocabShard(group, start=rank * V // tp)
    loss = shard.cross_entropy(local_logits, targets)      # == F.cross_entropy(full_logits, targets)

`apply_tensor_parallel(model, mesh, loss_parallel=True)` leaves the head's output sharded and sets
`model.vocab_parallel` to the rank's `VocabShard`; the LM loss and the evaluator use it when present.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

IGNORE_INDEX = -100


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, group, start: int, ignore_index: int) -> Tensor:
        x = logits.float()  # (N, V_local)
        local_v = x.shape[-1]
        m = x.max(-1).values  # (N,)
        dist.all_reduce(m, dist.ReduceOp.MAX, group=group)
        z = torch.exp(x - m[:, None]).sum(-1)
        dist.all_reduce(z, group=group)
        lse = m + torch.log(z)  # (N,) log-sum-exp over the whole vocabulary
        valid = targets != ignore_index
        mine = valid & (targets >= start) & (targets < start + local_v)  # this rank holds the target's logit
        local_t = torch.where(mine, targets - start, 0)
        t = x.gather(-1, local_t[:, None]).squeeze(-1) * mine
        dist.all_reduce(t, group=group)
        n = valid.sum().clamp_min(1)
        loss = ((lse - t) * valid).sum() / n
        ctx.save_for_backward(logits, lse, local_t, mine, valid, n)
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, lse, local_t, mine, valid, n = ctx.saved_tensors
        g = torch.exp(logits.float() - lse[:, None])  # this rank's slice of the softmax (N, V_local)
        g[torch.arange(len(g), device=g.device), local_t] -= mine.to(g.dtype)
        g = g * (valid[:, None] * (grad / n))
        return g.to(logits.dtype), None, None, None, None


@dataclass(frozen=True)
class VocabShard:
    """This rank's slice [start, start + V / tp) of the vocabulary and the tensor-parallel group."""

    group: object
    start: int

    def cross_entropy(
        self, logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX, reduction: str = "mean"
    ) -> Tensor:
        """Cross-entropy of local logits (..., V / tp) against global targets (...): mean over the targets
        != ignore_index ("mean") or their sum ("sum"), equal to F.cross_entropy on the gathered logits."""
        flat, t = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        loss = _VocabParallelCE.apply(flat, t, self.group, self.start, ignore_index)
        if reduction == "sum":
            return loss * (t != ignore_index).sum()
        if reduction != "mean":
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        return loss
