"""FlashAttention-2 forward and backward as Triton kernels (Dao 2023), tested against `flash_ref.py`.

Forward: one program per (query tile, batch * head); it streams the key tiles of its kv head
through the online softmax (exp2 of base-2 logits) and writes O and the log-sum-exp L (B, H, T).
Backward: D = rowsum(dO * O) (B, H, T); one program per (key tile, batch * kv head) accumulates dK
and dV over the G query heads of that kv head and all query tiles (no atomics, no repeated K/V);
one program per (query tile, batch * head) accumulates dQ. Causal (top-left aligned, as torch)
skips the tiles that are wholly masked and masks only those on the diagonal. fp32 accumulation;
inputs fp16 / bf16 / fp32 (fp32 dots in IEEE precision, not TF32, so fp32 results match the
reference to ~1e-6). Head dims 16..128 (padded to a power of two in registers); any sequence
length (partial tiles are masked). Tensors need unit stride in the head dim only, so the model's
(B, T, H, Dh) -> (B, H, T, Dh) transposed views are read in place.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scratchlm.kernels._triton import INTERPRET, tl, triton

LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2 e): exp2 is the fast hardware instruction
LN2 = 0.6931471805599453
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128  # tl.dot needs >= 16; above 128 the tiles no longer fit on chip
DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Tile shapes tried by the autotuner on a GPU (Triton's fused-attention tutorial and FA2's choices for
# A100/H100). Under the interpreter: the 16 x 16 tiles the tests use (so lengths cross tile edges).
_FWD = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4), (128, 32, 4, 4)]
_BWD = [(64, 64, 4, 3), (32, 64, 4, 3), (64, 128, 8, 3), (32, 128, 8, 2), (64, 32, 4, 4), (16, 64, 4, 3)]
INTERPRET_BLOCK = 16


def _tuned(configs, key):
    """Autotune on a GPU; fixed INTERPRET_BLOCK tiles (passed at launch) under the interpreter."""
    if INTERPRET:
        return lambda fn: fn
    cfgs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in configs]
    return triton.autotune(configs=cfgs, key=key)


def _launch_blocks() -> dict:
    return dict(BLOCK_M=INTERPRET_BLOCK, BLOCK_N=INTERPRET_BLOCK) if INTERPRET else {}


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skt, svt, offs_m, offs_d, lo, hi, S, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, DIAGONAL: tl.constexpr,
               UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):  # fmt: skip
    """Online softmax over the key tiles [lo, hi); DIAGONAL tiles also get the causal mask."""
    d_ok = offs_d[None, :] < HEAD_DIM
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < S) & d_ok
        k = tl.load(k_base + offs_n[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)  # (BN, BD)
        v = tl.load(v_base + offs_n[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # (BM, BN) base-2 logits
        valid = offs_n[None, :] < S
        if DIAGONAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every query row sees key 0 in the first tile
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)  # rescales what was summed under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@_tuned(_FWD, key=["T", "S", "HEAD_DIM", "CAUSAL"])
@triton.jit
def _fwd_kernel(Q, K, V, O, L, sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
                H, GROUP, T, S, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):  # fmt: skip
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = (offs_m[:, None] < T) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * skb + (h // GROUP) * skh  # the kv head of this query head: no copy of K/V per head
    v_base = V + b * svb + (h // GROUP) * svh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if CAUSAL:
        # Key tiles before `diag` are wholly visible to every query of this tile (no mask); tiles from
        # `diag` to the last query get the causal mask; later tiles are wholly masked and skipped.
        hi = tl.minimum(S, m0 + BLOCK_M)
        diag = tl.minimum((m0 // BLOCK_N) * BLOCK_N, hi)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skt, svt, offs_m, offs_d, 0, diag, S, qk_scale,
                                   HEAD_DIM, BLOCK_N, False, UPCAST, DOT_PREC)  # fmt: skip
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skt, svt, offs_m, offs_d, diag, hi, S, qk_scale,
                                   HEAD_DIM, BLOCK_N, True, UPCAST, DOT_PREC)  # fmt: skip
    else:
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skt, svt, offs_m, offs_d, 0, S, S, qk_scale,
                                   HEAD_DIM, BLOCK_N, False, UPCAST, DOT_PREC)  # fmt: skip
    acc = acc / l_i[:, None]
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], acc.to(O.dtype.element_ty), mask=q_mask)
    tl.store(L + bh * T + offs_m, (m_i + tl.math.log2(l_i)) * LN2, mask=offs_m < T)  # natural-log L


@_tuned(_BWD, key=["T", "S", "HEAD_DIM", "CAUSAL", "GROUP"])
@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, L, DELTA, DK, DV,
                     sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdob, sdoh, sdot,
                     H, KV, GROUP, T, S, scale, qk_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):  # fmt: skip
    """dK, dV of one key tile of one kv head: sums over its G query heads and every query tile that sees it.
    Works with transposed tiles (keys x queries) so both products accumulate without a transpose."""
    pid_n, bk = tl.program_id(0), tl.program_id(1)
    b, kvh = bk // KV, bk % KV
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d[None, :] < HEAD_DIM
    kv_mask = (offs_n[:, None] < S) & d_ok
    k = tl.load(K + b * skb + kvh * skh + offs_n[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * svb + kvh * svh + offs_n[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo = 0
    if CAUSAL:
        lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M  # query tiles before this one cannot see these keys
    for g in range(0, GROUP):
        h = kvh * GROUP + g
        q_base = Q + b * sqb + h * sqh
        do_base = DO + b * sdob + h * sdoh
        row_base = (b * H + h) * T
        for m0 in range(lo, T, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            q_mask = (offs_m[:, None] < T) & d_ok
            q = tl.load(q_base + offs_m[:, None] * sqt + offs_d[None, :], mask=q_mask, other=0.0)  # (BM, BD)
            do = tl.load(do_base + offs_m[:, None] * sdot + offs_d[None, :], mask=q_mask, other=0.0)
            if UPCAST:
                q, do = q.to(tl.float32), do.to(tl.float32)
            lse = tl.load(L + row_base + offs_m, mask=offs_m < T, other=0.0) * LOG2E
            delta = tl.load(DELTA + row_base + offs_m, mask=offs_m < T, other=0.0)
            s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)  # (BN, BM) = scores transposed
            valid = (offs_m[None, :] < T) & (offs_n[:, None] < S)
            if CAUSAL:
                valid = valid & (offs_m[None, :] >= offs_n[:, None])
            p_t = tl.where(valid, tl.math.exp2(s_t * qk_scale - lse[None, :]), 0.0)  # recomputed from L
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)  # (BN, BM)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PREC)
    out = bk * S * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]  # dK, dV: contiguous (B, K, S, Dh)
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@_tuned(_BWD, key=["T", "S", "HEAD_DIM", "CAUSAL"])
@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, L, DELTA, DQ,
                   sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdob, sdoh, sdot,
                   H, GROUP, T, S, scale, qk_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):  # fmt: skip
    """dQ of one query tile of one head, over the key tiles it sees."""
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d[None, :] < HEAD_DIM
    q_mask = (offs_m[:, None] < T) & d_ok
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdot + offs_d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q, do = q.to(tl.float32), do.to(tl.float32)
    lse = tl.load(L + bh * T + offs_m, mask=offs_m < T, other=0.0) * LOG2E
    delta = tl.load(DELTA + bh * T + offs_m, mask=offs_m < T, other=0.0)
    k_base = K + b * skb + (h // GROUP) * skh
    v_base = V + b * svb + (h // GROUP) * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = S
    if CAUSAL:
        hi = tl.minimum(S, m0 + BLOCK_M)
    for n0 in range(0, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < S) & d_ok
        k = tl.load(k_base + offs_n[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)  # (BM, BN)
        valid = (offs_m[:, None] < T) & (offs_n[None, :] < S)
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None])
        p = tl.where(valid, tl.math.exp2(s * qk_scale - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    out = bh * T * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]  # dQ: contiguous (B, H, T, Dh)
    tl.store(DQ + out, (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


def _strides(t: Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _meta(q: Tensor, causal: bool) -> dict:
    return dict(
        HEAD_DIM=q.shape[-1],
        BLOCK_D=max(16, triton.next_power_of_2(q.shape[-1])),
        CAUSAL=causal,
        UPCAST=INTERPRET,  # the interpreter's tl.dot is wrong on bf16 (and needs no tensor cores)
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        **_launch_blocks(),
    )


class FlashAttentionTriton(torch.autograd.Function):
    """(q, k, v, causal, scale) -> (O, L); inputs already checked by `attention.py`."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float):
        B, H, T, Dh = q.shape
        K, S = k.shape[1], k.shape[2]
        o = torch.empty(B, H, T, Dh, dtype=q.dtype, device=q.device)
        lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)

        def grid(meta):
            return triton.cdiv(T, meta["BLOCK_M"]), B * H

        _fwd_kernel[grid](q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
                          H, H // K, T, S, scale * LOG2E, **_meta(q, causal))  # fmt: skip
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = (causal, scale)
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse = ctx.saved_tensors
        causal, scale = ctx.args
        B, H, T, Dh = q.shape
        K, S = k.shape[1], k.shape[2]
        if do.stride(-1) != 1:
            do = do.contiguous()
        # D = rowsum(dO * O), the softmax backward's subtracted term (FA2 Algorithm 2, line 4).
        delta = (do.float() * o.float()).sum(-1).contiguous()  # (B, H, T)
        dq = torch.empty(B, H, T, Dh, dtype=q.dtype, device=q.device)
        dk = torch.empty(B, K, S, Dh, dtype=k.dtype, device=k.device)
        dv = torch.empty(B, K, S, Dh, dtype=v.dtype, device=v.device)
        strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
        meta = _meta(q, causal)

        def grid_kv(meta):
            return triton.cdiv(S, meta["BLOCK_N"]), B * K

        def grid_q(meta):
            return triton.cdiv(T, meta["BLOCK_M"]), B * H

        _bwd_dkdv_kernel[grid_kv](q, k, v, do, lse, delta, dk, dv, *strides,
                                  H, K, H // K, T, S, scale, scale * LOG2E, **meta)  # fmt: skip
        _bwd_dq_kernel[grid_q](q, k, v, do, lse, delta, dq, *strides,
                               H, H // K, T, S, scale, scale * LOG2E, **meta)  # fmt: skip
        return dq, dk, dv, None, None


def flash_attention_triton(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """FlashAttention-2 Triton kernels: (O (B, H, T, Dh), L (B, H, T)). Check inputs with `attention.py`."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return FlashAttentionTriton.apply(q, k, v, causal, scale)
