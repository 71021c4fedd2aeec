"""Expert parallelism: the E experts of every MoE layer split over the ranks of a group, tokens sent to the
rank that holds their expert and back with two all-to-alls (GShard, Lepikhin et al. 2020; DeepSpeed-MoE).

    apply_expert_parallel(model, group)       # in place: each MoE layer keeps experts [r*E/P, (r+1)*E/P)
    loss = loss_fn(model(x_local), y_local)   # each rank on its own slice of the batch (data parallel)
    loss.backward()
    sync_expert_parallel_grads(model, group)  # dense grads averaged over ranks; expert grads divided by P

The router and everything outside the experts are replicated, as in data parallel. Per MoE layer, after the
router has sorted this rank's token->expert assignments by expert (`MoE.forward`):

    1. counts: all-to-all of the (P, E/P) assignment counts, so each rank knows how many rows it receives
       from each source rank for each of its experts;
    2. dispatch: all-to-all of the assignment rows (n, D), split by destination rank;
    3. the received rows, grouped (source, expert), are regrouped by expert and run as one batch per
       local expert, then put back in (source, expert) order;
    4. combine: the reverse all-to-all returns every row to the rank that sent it, in its original order.

The all-to-all is an autograd Function: its backward is the all-to-all of the gradients with the split
sizes swapped. Gradients: each rank's loss is the mean over its own tokens, and the step's loss is the mean
over ranks, so dense gradients are all-reduced and divided by P; an expert's gradient already sums the
contributions of every rank's tokens (they arrived through the all-to-all), so it is only divided by P.

Routing stays dropless for an exact match with one process (capacity is per rank's batch otherwise), and
the load-balancing loss is computed per rank from its own tokens (as DeepSpeed / Megatron do), which is not
the global loss: set aux_loss_coef = 0 to compare with one process exactly.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from scratchlm.errors import ScratchLMError


class _AllToAll(torch.autograd.Function):
    """Rows of `x` split by `send` sizes to the ranks of `group`; returns the rows received (`recv` sizes)."""

    @staticmethod
    def forward(ctx, x: Tensor, send: list[int], recv: list[int], group) -> Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = x.new_empty((sum(recv), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), recv, send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        back = grad.new_empty((sum(ctx.send), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), ctx.send, ctx.recv, group=ctx.group)
        return back, None, None, None


def all_to_all(x: Tensor, send: list[int], recv: list[int], group) -> Tensor:
    return _AllToAll.apply(x, send, recv, group)


class ExpertParallelExperts(nn.Module):
    """Stands in for `GroupedExperts` (same call: rows sorted by expert, counts per expert) holding only this
    rank's E / P experts; the rows of other ranks' experts travel by all-to-all."""

    def __init__(self, experts: nn.Module, group):
        super().__init__()
        self.group = group
        P, rank = dist.get_world_size(group), dist.get_rank(group)
        E = experts.w_up.shape[0]
        if E % P:
            raise ScratchLMError(f"expert parallel: {E} experts do not split over {P} ranks")
        self.n_experts, self.n_local, self.ranks = E, E // P, P
        lo, hi = rank * self.n_local, (rank + 1) * self.n_local
        # the local experts: the same module type, its batched weights cut to [lo, hi)
        for name in ("w_up", "w_gate", "w_down", "b_up", "b_gate", "b_down"):
            p = getattr(experts, name)
            if p is not None:
                setattr(experts, name, nn.Parameter(p.detach()[lo:hi].clone()))
        self.local = experts

    def forward(self, x: Tensor, counts: list[int]) -> Tensor:
        """x: (n, D) this rank's assignments sorted by (global) expert, counts[e] for expert e -> (n, D)."""
        P, L = self.ranks, self.n_local
        mine = torch.tensor(counts, dtype=torch.long).view(P, L)  # rows for rank p's expert j
        theirs = torch.empty_like(mine)  # theirs[p, j]: rows rank p sends to my expert j
        dist.all_to_all_single(theirs, mine, group=self.group)
        send, recv = mine.sum(1).tolist(), theirs.sum(1).tolist()
        rows = all_to_all(x, send, recv, self.group)  # (sum recv, D), grouped by (source, local expert)
        # regroup by local expert: chunk (p, j) of the received rows goes to expert j
        chunks = rows.split(theirs.flatten().tolist())
        by_expert = [chunks[p * L + j] for j in range(L) for p in range(P)]
        y = self.local(torch.cat(by_expert), theirs.sum(0).tolist())  # (sum recv, D)
        # back to (source, expert) order, then home
        out_chunks = y.split(theirs.t().flatten().tolist())  # (j, p) order
        back = torch.cat([out_chunks[j * P + p] for p in range(P) for j in range(L)])
        return all_to_all(back, recv, send, self.group)  # (n, D), in x's order


def apply_expert_parallel(model: nn.Module, group=None) -> nn.Module:
    """Split the experts of every MoE layer of `model` over `group` (default: the world) in place."""
    from scratchlm.model.moe import MoE

    group = group or dist.group.WORLD
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    if not layers:
        raise ScratchLMError("expert parallel: the model has no MoE layers (model.moe.num_experts = 0)")
    for moe in layers:
        if moe.capacity_factor > 0:
            raise ScratchLMError("expert parallel runs dropless routing (moe.capacity_factor = 0)")
        moe.experts = ExpertParallelExperts(moe.experts, group)
    return model


def is_expert_param(name: str) -> bool:
    return ".experts.local." in name


@torch.no_grad()
def sync_expert_parallel_grads(model: nn.Module, group=None) -> None:
    """After backward: dense gradients averaged over the ranks, expert gradients divided by their number."""
    group = group or dist.group.WORLD
    P = dist.get_world_size(group)
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        if not is_expert_param(name):
            dist.all_reduce(p.grad, group=group)
        p.grad /= P
