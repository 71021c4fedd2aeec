"""Context parallelism: ring attention over sequence shards, installed by swapping the model's `attend`.

    apply_context_parallel(model, cp_group)                  # or a 1-d DeviceMesh
    ids = shard_sequence(input_ids, cp_group)                # (B, T) -> (B, T / cp): this rank's tokens
    logits = model(ids)                                      # (B, T / cp, V), at this rank's global positions
    full = unshard_sequence(logits, cp_group)                # (B, T, V), in the global order

Each rank holds a slice of Q, K, V along time. K/V blocks go around the ring (cp - 1 hops); each hop's
transfer is started before the current block is computed, so communication overlaps compute. Every
(query chunk, key chunk) pair runs `kernels.attention_with_lse`: a chunk earlier than the query chunk is
attended in full, the same chunk causally, a later chunk skipped; the partial outputs are merged with
their log-sum-exps (online softmax). Backward is FlashAttention-2's, per block in plain PyTorch: the
probabilities are recomputed from the saved final log-sum-exp, dQ stays local, dK/dV accumulators travel
with their K/V and arrive back at their owner after the last hop.

Load balance (`balanced=True`, the default): the sequence is cut into 2 * cp chunks and rank r holds
chunks r and 2cp-1-r, so every rank has the same amount of causal work (contiguous shards leave the last
rank with cp times the first's). Grouped-query K/V (fewer kv heads) travel unrepeated.

Under CP the model is causal self-attention over the whole sequence without padding: the attention mask a
layer builds from its *local* positions is ignored (the ring's block causality replaces it).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist
from torch import Tensor

from scratchlm.errors import ScratchLMError
from scratchlm.kernels.attention import attention_with_lse


def _group(group_or_mesh):
    """A process group from a group, a 1-d DeviceMesh, or None (the default group)."""
    if group_or_mesh is None:
        return dist.group.WORLD
    return group_or_mesh.get_group() if hasattr(group_or_mesh, "get_group") else group_or_mesh


def chunk_ids(rank: int, cp: int, balanced: bool) -> list[int]:
    """The global chunk indices a rank holds, in local order (chunks of T / cp, or T / 2cp when balanced)."""
    return [rank, 2 * cp - 1 - rank] if balanced else [rank]


def shard_sequence(x: Tensor, group=None, dim: int = 1, balanced: bool = True) -> Tensor:
    """This rank's slice of `x` along `dim` (time)."""
    g = _group(group)
    cp, rank = dist.get_world_size(g), dist.get_rank(g)
    n = 2 * cp if balanced else cp
    if x.shape[dim] % n:
        raise ScratchLMError(f"context parallel: sequence length {x.shape[dim]} is not a multiple of {n} chunks")
    chunks = x.chunk(n, dim)
    return torch.cat([chunks[i] for i in chunk_ids(rank, cp, balanced)], dim)


def unshard_sequence(x: Tensor, group=None, dim: int = 1, balanced: bool = True) -> Tensor:
    """The whole sequence from every rank's slice (all-gather, then the chunks back in global order)."""
    g = _group(group)
    cp = dist.get_world_size(g)
    parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(cp)]
    dist.all_gather(parts, x.contiguous(), group=g)
    per = len(chunk_ids(0, cp, balanced))
    ordered: dict[int, Tensor] = {}
    for r, part in enumerate(parts):
        for i, c in zip(chunk_ids(r, cp, balanced), part.chunk(per, dim), strict=True):
            ordered[i] = c
    return torch.cat([ordered[i] for i in sorted(ordered)], dim)


class _Ring:
    """Sends to rank + 1 and receives from rank - 1 of the group, asynchronously."""

    def __init__(self, group):
        self.group = group
        self.cp, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.next = dist.get_global_rank(group, (self.rank + 1) % self.cp)
        self.prev = dist.get_global_rank(group, (self.rank - 1) % self.cp)

    def start(self, tensors: list[Tensor]) -> tuple[list, list[Tensor]]:
        bufs = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]
        ops = [dist.P2POp(dist.isend, t.contiguous(), self.next, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, b, self.prev, self.group) for b in bufs]
        return dist.batch_isend_irecv(ops), bufs

    @staticmethod
    def finish(handle: tuple[list, list[Tensor]]) -> list[Tensor]:
        reqs, bufs = handle
        for r in reqs:
            r.wait()
        return bufs


def _pairs(rank: int, src: int, cp: int, balanced: bool):
    """(local q chunk, local k chunk, causal) for every block pair that is not masked out entirely."""
    for qi, qc in enumerate(chunk_ids(rank, cp, balanced)):
        for ki, kc in enumerate(chunk_ids(src, cp, balanced)):
            if kc <= qc:
                yield qi, ki, kc == qc


def _merge(out: Tensor | None, lse: Tensor | None, o: Tensor, lo: Tensor) -> tuple[Tensor, Tensor]:
    """Combine two softmax-normalised partial outputs by their log-sum-exps (B, H, T)."""
    if out is None:
        return o.float(), lo.float()
    new = torch.logaddexp(lse, lo.float())
    return out * torch.exp(lse - new)[..., None] + o.float() * torch.exp(lo.float() - new)[..., None], new


def _block_grads(q, k, v, do, lse, delta, causal: bool, scale: float):
    """FlashAttention-2 backward of one block, grouped-query aware: q/do (B, H, T, D), k/v (B, K, S, D)."""
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    qg, dog = q.view(B, K, G, T, D), do.view(B, K, G, T, -1)  # query heads grouped by their kv head
    s = torch.einsum("bkgtd,bksd->bkgts", qg, k) * scale
    if causal:
        s = s.masked_fill(torch.ones(T, S, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    p = torch.exp(s - lse.view(B, K, G, T, 1))  # (B, K, G, T, S)
    dv = torch.einsum("bkgts,bkgtd->bksd", p, dog)
    dp = torch.einsum("bkgtd,bksd->bkgts", dog, v)
    ds = p * (dp - delta.view(B, K, G, T, 1))
    dq = torch.einsum("bkgts,bksd->bkgtd", ds, k).reshape(B, H, T, D) * scale
    dk = torch.einsum("bkgts,bkgtd->bksd", ds, qg) * scale
    return dq, dk, dv


class RingAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, balanced: bool, scale: float, backend: str):
        ring = _Ring(group)
        cp, rank = ring.cp, ring.rank
        n = len(chunk_ids(rank, cp, balanced))
        qs = q.chunk(n, 2)
        outs: list = [None] * n
        lses: list = [None] * n
        kv = [k, v]
        for step in range(cp):
            src = (rank - step) % cp
            pending = ring.start(kv) if step < cp - 1 else None  # the next hop travels while this block computes
            ks, vs = kv[0].chunk(n, 2), kv[1].chunk(n, 2)
            for qi, ki, causal in _pairs(rank, src, cp, balanced):
                o, lo = attention_with_lse(qs[qi], ks[ki], vs[ki], causal, backend, scale)
                outs[qi], lses[qi] = _merge(outs[qi], lses[qi], o, lo)
            if pending is not None:
                kv = ring.finish(pending)
        out, lse = torch.cat(outs, 2).to(q.dtype), torch.cat(lses, 2)  # (B, H, T, D), (B, H, T) fp32
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group, ctx.balanced, ctx.scale = group, balanced, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        ring = _Ring(ctx.group)
        cp, rank, balanced = ring.cp, ring.rank, ctx.balanced
        n = len(chunk_ids(rank, cp, balanced))
        f32 = torch.float32
        delta = (dout.float() * out.float()).sum(-1)  # (B, H, T): rowsum(dO * O)
        qs, dos = q.float().chunk(n, 2), dout.float().chunk(n, 2)
        lses, deltas = lse.chunk(n, 2), delta.chunk(n, 2)
        dqs = [torch.zeros_like(c) for c in qs]
        kf, vf = k.to(f32), v.to(f32)
        dk, dv = torch.zeros_like(kf), torch.zeros_like(vf)
        for step in range(cp):
            src = (rank - step) % cp
            pending = ring.start([kf, vf]) if step < cp - 1 else None
            ks, vs = kf.chunk(n, 2), vf.chunk(n, 2)
            dks, dvs = list(dk.chunk(n, 2)), list(dv.chunk(n, 2))
            for qi, ki, causal in _pairs(rank, src, cp, balanced):
                dq_b, dk_b, dv_b = _block_grads(
                    qs[qi], ks[ki], vs[ki], dos[qi], lses[qi], deltas[qi], causal, ctx.scale
                )
                dqs[qi] += dq_b
                dks[ki] = dks[ki] + dk_b
                dvs[ki] = dvs[ki] + dv_b
            dk, dv = torch.cat(dks, 2), torch.cat(dvs, 2)
            # the accumulators follow their K/V; after the last block one more hop returns them to the owner
            dk, dv = ring.finish(ring.start([dk, dv]))
            if pending is not None:
                kf, vf = ring.finish(pending)
        dq = torch.cat(dqs, 2)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def ring_attention(
    q: Tensor, k: Tensor, v: Tensor, group=None, balanced: bool = True, scale: float | None = None, backend=None
) -> Tensor:
    """Causal attention of this rank's queries over the whole (sharded) sequence: q (B, H, T/cp, D),
    k/v (B, K, T/cp, D) -> (B, H, T/cp, D). backend: "triton" on CUDA, else "reference"."""
    g = _group(group)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if backend is None:
        backend = "triton" if q.is_cuda else "reference"
    if balanced and q.shape[2] % 2:
        raise ScratchLMError(f"ring attention: a balanced shard holds two chunks, got odd length {q.shape[2]}")
    return RingAttentionFunction.apply(q, k, v, g, balanced, scale, backend)


class RingAttend:
    """The `attend` callable of a context-parallel model (signature of `scratchlm.model.attend.Attend`)."""

    def __init__(self, group, balanced: bool = True, backend: str | None = None):
        self.group, self.balanced, self.backend = _group(group), balanced, backend

    def __call__(self, q, k, v, causal=False, mask=None, dropout_p=0.0, scale=None) -> Tensor:
        if dropout_p:
            raise ScratchLMError("context parallel: attention dropout is not supported by ring attention")
        if q.shape[2] != k.shape[2]:
            raise ScratchLMError("context parallel: ring attention takes self-attention without a KV cache")
        return ring_attention(q, k, v, self.group, self.balanced, scale, self.backend)


def apply_context_parallel(model, group, balanced: bool = True, backend: str | None = None) -> None:
    """Install ring attention in every attention layer of `model` (a `TransformerLM`). The caller shards
    inputs and targets with `shard_sequence` (same `balanced`); a forward without `positions` then
    gets this rank's global positions."""
    if not hasattr(model, "set_attend"):
        raise ScratchLMError(f"context parallel: {type(model).__name__} has no set_attend (expected TransformerLM)")
    model.set_attend(RingAttend(group, balanced, backend))
    _global_positions(model, _group(group), balanced)


def _global_positions(model, group, balanced: bool) -> None:
    """Make a forward without explicit positions use this rank's *global* positions (RoPE, learned positions):
    its T / cp tokens are chunks of the whole sequence (`shard_sequence` of 0..T-1), not 0..T/cp-1. Replaces
    the model's `step_context` on the instance, from outside; the context stays unpadded (no mask is built:
    the ring's block causality is the mask)."""
    local_context = model.step_context  # the bound method of the model's class
    cp = dist.get_world_size(group)

    def step_context(input_ids: Tensor, cache, positions: Tensor | None):
        if positions is not None or cache is not None:
            return local_context(input_ids, cache, positions)
        T = input_ids.shape[1] * cp  # the whole sequence
        pos = shard_sequence(torch.arange(T, device=input_ids.device)[None], group, balanced=balanced)  # (1, T / cp)
        return dataclasses.replace(local_context(input_ids, None, pos), padded=False)

    model.step_context = step_context
