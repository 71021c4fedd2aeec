"""Attention in PyTorch: the naive form, and FlashAttention-2 tiled, the reference for the Triton kernels.

Shapes: q (B, H, T, Dh), k and v (B, K, S, Dh), H % K == 0 (grouped-query attention: query head h
reads kv head h // G, G = H / K). Causal masking is top-left aligned, as torch's `is_causal`: query
i sees keys j <= i.

`FlashAttentionReference` (Dao 2023, 'FlashAttention-2', Algorithms 1 and 2) never holds a T x S
matrix: the forward walks query tiles x key tiles with the online softmax and keeps only the
output O and the log-sum-exp L (B, H, T); the backward recomputes each probability tile from L.
Memory is O(T) (plus one tile); speed on CPU is that of a Python loop over tiles, so it is the
readable specification of the kernels and the memory-bounded CPU path, not a fast one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def naive_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    scale: float | None = None,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """softmax(q k^T * scale [+ mask]) v with the whole (T, S) score matrix in memory: what FlashAttention
    avoids, and the project's own full-score attention (the model's attn_backend="naive").

    q (B, H, T, Dh), k (B, K, S, Dh), v (B, K, S, Dv) -> (B, H, T, Dv). `causal`: query i sees keys j <= i
    (top-left aligned, as torch). `mask`: bool, True = may attend, broadcastable to (B, H, T, S). A query
    that may attend to nothing gets a zero output (torch's SDPA gives NaN there). Scores and softmax in fp32
    at least (fp64 inputs stay fp64: the tests' exact reference)."""
    B, H, T, Dh = q.shape
    K, S = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(Dh) if scale is None else scale
    acc_t = torch.promote_types(q.dtype, torch.float32)
    # Queries grouped by their kv head, (B, K, G, T, Dh) against (B, K, 1, S, Dh): GQA without copying K/V.
    qg = q.view(B, K, H // K, T, Dh).to(acc_t)
    s = (qg @ k.unsqueeze(2).to(acc_t).transpose(-1, -2)) * scale  # (B, K, G, T, S)
    visible = None
    if causal:
        visible = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        m = mask.expand(B, H, T, S).reshape(B, K, H // K, T, S)
        visible = m if visible is None else m & visible
    if visible is not None:
        s = s.masked_fill(~visible, -math.inf)
    p = torch.softmax(s, dim=-1)
    if visible is not None:  # fully masked rows: 0/0 = NaN in softmax, a zero output here
        p = torch.where(visible.any(dim=-1, keepdim=True), p, 0.0)
    if dropout_p > 0.0:
        p = F.dropout(p, dropout_p)
    out = p @ v.unsqueeze(2).to(acc_t)  # (B, K, G, T, Dv)
    return out.to(q.dtype).reshape(B, H, T, v.shape[-1])


def _causal_tile_mask(m0: int, m1: int, n0: int, n1: int, device) -> Tensor | None:
    """(m1-m0, n1-n0) bool, True = masked (key after query); None when the tile is fully visible."""
    if n1 - 1 <= m0:  # the last key is not after the first query
        return None
    rows = torch.arange(m0, m1, device=device)[:, None]
    cols = torch.arange(n0, n1, device=device)[None, :]
    return cols > rows


class FlashAttentionReference(torch.autograd.Function):
    """(q, k, v, causal, scale, block_m, block_n) -> (O, L); L is not differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float, block_m: int, block_n: int):
        B, H, T, Dh = q.shape
        K, S = k.shape[1], k.shape[2]
        G = H // K
        acc_t = torch.promote_types(q.dtype, torch.float32)  # accumulate in fp32 (fp64 stays fp64)
        qg = q.view(B, K, G, T, Dh)  # (B, K, G, T, Dh)
        kg, vg = k.unsqueeze(2), v.unsqueeze(2)  # (B, K, 1, S, Dh): broadcast over the group, not copied
        o = torch.empty(B, K, G, T, Dh, dtype=q.dtype, device=q.device)
        lse = torch.empty(B, K, G, T, dtype=acc_t, device=q.device)
        for m0 in range(0, T, block_m):
            m1 = min(m0 + block_m, T)
            qi = qg[..., m0:m1, :].to(acc_t) * scale  # (B, K, G, bm, Dh)
            m_i = torch.full(qi.shape[:-1], -math.inf, dtype=acc_t, device=q.device)  # running row max
            l_i = torch.zeros_like(m_i)  # running sum of exp(s - m_i)
            acc = torch.zeros_like(qi)  # running sum of exp(s - m_i) v
            hi = min(S, m1) if causal else S  # causal: key tiles wholly after the last query are skipped
            for n0 in range(0, hi, block_n):
                n1 = min(n0 + block_n, hi)
                s = qi @ kg[..., n0:n1, :].to(acc_t).transpose(-1, -2)  # (B, K, G, bm, bn)
                mask = _causal_tile_mask(m0, m1, n0, n1, q.device) if causal else None
                if mask is not None:
                    s = s.masked_fill(mask, -math.inf)
                m_new = torch.maximum(m_i, s.amax(-1))  # finite: every query sees key 0
                p = torch.exp(s - m_new.unsqueeze(-1))
                alpha = torch.exp(m_i - m_new)  # rescales what was summed under the old max
                l_i = l_i * alpha + p.sum(-1)
                acc = acc * alpha.unsqueeze(-1) + p @ vg[..., n0:n1, :].to(acc_t)
                m_i = m_new
            o[..., m0:m1, :] = (acc / l_i.unsqueeze(-1)).to(q.dtype)
            lse[..., m0:m1] = m_i + torch.log(l_i)
        o, lse = o.view(B, H, T, Dh), lse.view(B, H, T)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = (causal, scale, block_m, block_n)
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse = ctx.saved_tensors
        causal, scale, block_m, block_n = ctx.args
        B, H, T, Dh = q.shape
        K, S = k.shape[1], k.shape[2]
        G = H // K
        acc_t = lse.dtype
        qg, dog = q.view(B, K, G, T, Dh), do.reshape(B, K, G, T, Dh)
        lse_g = lse.view(B, K, G, T)
        # D_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij: the softmax backward's subtracted term, once per row.
        delta = (dog.to(acc_t) * o.view(B, K, G, T, Dh).to(acc_t)).sum(-1)  # (B, K, G, T)
        dq = torch.zeros(B, K, G, T, Dh, dtype=acc_t, device=q.device)
        dk = torch.zeros(B, K, S, Dh, dtype=acc_t, device=q.device)
        dv = torch.zeros_like(dk)
        for n0 in range(0, S, block_n):
            n1 = min(n0 + block_n, S)
            kj = k[:, :, None, n0:n1].to(acc_t)  # (B, K, 1, bn, Dh)
            vj = v[:, :, None, n0:n1].to(acc_t)
            first = (n0 // block_m) * block_m if causal else 0  # earlier queries cannot see these keys
            for m0 in range(first, T, block_m):
                m1 = min(m0 + block_m, T)
                qi, doi = qg[..., m0:m1, :].to(acc_t), dog[..., m0:m1, :].to(acc_t)  # (B, K, G, bm, Dh)
                s = (qi @ kj.transpose(-1, -2)) * scale  # (B, K, G, bm, bn)
                p = torch.exp(s - lse_g[..., m0:m1, None])  # the forward's probabilities, recomputed
                mask = _causal_tile_mask(m0, m1, n0, n1, q.device) if causal else None
                if mask is not None:
                    p = p.masked_fill(mask, 0.0)
                dv[:, :, n0:n1] += (p.transpose(-1, -2) @ doi).sum(2)  # sum over the G query heads of the kv head
                dp = doi @ vj.transpose(-1, -2)  # (B, K, G, bm, bn)
                ds = p * (dp - delta[..., m0:m1, None]) * scale
                dq[..., m0:m1, :] += ds @ kj
                dk[:, :, n0:n1] += (ds.transpose(-1, -2) @ qi).sum(2)
        return dq.view(B, H, T, Dh).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def flash_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    scale: float | None = None,
    block_m: int = 128,
    block_n: int = 128,
) -> tuple[Tensor, Tensor]:
    """FlashAttention-2 in PyTorch: (O (B, H, T, Dh), L (B, H, T) natural-log log-sum-exp).

    Tiles of block_m queries x block_n keys (128 x 128: large enough that the Python loop is not the
    cost on CPU, small enough that a tile's (B, H, 128, 128) scores stay small)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return FlashAttentionReference.apply(q, k, v, causal, scale, block_m, block_n)
