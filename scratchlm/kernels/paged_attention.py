"""Attention over a paged KV cache: the decode kernel, its PyTorch reference, the cache write and a gather.

    store_kv(k, v, k_cache, v_cache, slot_mapping)          # k, v (N, K, Dh) -> their slots; slot -1 skips
    o = paged_attention(q, k_cache, v_cache, block_tables, context_lens, window=0)   # (B, H, Dh) -> (B, H, Dh)
    k, v = gather_kv(k_cache, v_cache, block_tables, context_lens)                   # (B, T_max, K, Dh) each

Layout, per layer: k_cache, v_cache (num_blocks, block_size, K, Dh); token t of a sequence lives in
physical block block_tables[b, t // block_size] at offset t % block_size, i.e. in slot
block * block_size + offset of the caches viewed as (num_blocks * block_size, K, Dh). block_tables
(B, max_blocks) int32/int64, -1 = no block (padding past the end, or a block a sliding window released);
context_lens (B,): the tokens of each sequence in the cache, the query's own included.

Decode (`paged_attention`): one query per sequence, at position context_lens[b] - 1, attending to
positions 0 .. context_lens[b] - 1, or with `window` > 0 to the last `window` of them (a token sees itself
and window - 1 before it, as the model's sliding-window mask). Grouped-query attention: H = K * G, query
head h reads kv head h // G. A row with context length 0 gives zeros (a padding row of a batch).

Backends: "reference" (gather into dense tensors, plain softmax attention in fp32), "triton" (the kernel
below), "cpu" (`_paged_decode.c`: the same walk over blocks compiled for CPU, fp32, threads), "tiled"
(`paged_attention_tiled.py`: the same online softmax in PyTorch ops over tiles of blocks, no padded
gather), "auto" (triton on CUDA when it can run; on CPU the compiled kernel where it is built and takes
the inputs, else tiled); `use_backend("triton")` or
backend="triton" forces the kernel (the tests run it under TRITON_INTERPRET=1 on CPU).

The kernel (vLLM's PagedAttention, Kwon et al. 2023, with flash-decoding's split over the context, Dao et
al. 2023): one program per (sequence, kv head, split). It loads the G query heads of its kv head once and
walks the sequence's blocks in its share of the context, one block (block_size tokens x Dh) per
iteration, so each K/V block is read once for all G heads (no per-head copy); online softmax with fp32
statistics and accumulator. Blocks wholly before the window are never read. Scores are broadcast
multiply-and-sum, not tl.dot: decode is bound by reading the cache, G and block_size can be below
tl.dot's minimum of 16, and the interpreter's bf16 tl.dot bug does not arise (tiles are cast to fp32).
With num_splits > 1 each split writes its unnormalised output, running max and sum, and a few PyTorch
ops merge them (`_merge_splits`); by default the splits fill the GPU when B * K programs would not.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scratchlm.errors import ScratchLMError
from scratchlm.kernels._triton import INTERPRET, tl, triton, triton_usable
from scratchlm.kernels.dispatch import choose
from scratchlm.kernels.paged_attention_tiled import cpu_unsupported, paged_attention_cpu, paged_attention_tiled

BACKENDS = ("auto", "triton", "cpu", "tiled", "reference")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM, MAX_BLOCK_SIZE = 256, 256  # one block's (block_size, Dh) tile lives in registers
LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2 e)
MAX_SPLITS = 32


def _acc_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)  # fp32 math; fp64 stays fp64 (tests)


def _check_cache(name: str, k_cache: Tensor, v_cache: Tensor) -> None:
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ScratchLMError(
            f"{name}: k_cache and v_cache must both be (num_blocks, block_size, K, Dh), "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k_cache.device != v_cache.device:
        raise ScratchLMError(f"{name}: k_cache on {k_cache.device}, v_cache on {v_cache.device}")


def _check_tables(name: str, B: int, block_tables: Tensor, context_lens: Tensor, device) -> None:
    if block_tables.dim() != 2 or block_tables.shape[0] != B or block_tables.is_floating_point():
        raise ScratchLMError(f"{name}: block_tables must be integer ({B}, max_blocks), got {tuple(block_tables.shape)}")
    if context_lens.shape != (B,) or context_lens.is_floating_point():
        raise ScratchLMError(f"{name}: context_lens must be integer ({B},), got {tuple(context_lens.shape)}")
    if block_tables.device != device or context_lens.device != device:
        raise ScratchLMError(f"{name}: block_tables and context_lens must be on {device}")


def check_inputs(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor, window: int):
    _check_cache("paged_attention", k_cache, v_cache)
    if q.dim() != 3 or not q.is_floating_point():
        raise ScratchLMError(f"paged_attention: q must be floating-point (B, H, Dh), got {tuple(q.shape)} {q.dtype}")
    (B, H, Dh), K = q.shape, k_cache.shape[2]
    if k_cache.shape[3] != Dh or K == 0 or H % K:
        raise ScratchLMError(
            f"paged_attention: q {tuple(q.shape)} and cache {tuple(k_cache.shape)} need the same head dim and "
            "query heads a multiple of kv heads"
        )
    if q.device != k_cache.device:
        raise ScratchLMError(f"paged_attention: q on {q.device}, cache on {k_cache.device}")
    _check_tables("paged_attention", B, block_tables, context_lens, q.device)
    if window < 0:
        raise ScratchLMError(f"paged_attention: window must be >= 0 (0 = off), got {window}")


# ---------------------------------------------------------------------- the cache write
def store_kv_reference(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    K, Dh = k_cache.shape[2:]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.view(-1, K, Dh).index_copy_(0, slots, k[keep].to(k_cache.dtype))  # (num_blocks * block_size, K, Dh)
    v_cache.view(-1, K, Dh).index_copy_(0, slots, v[keep].to(v_cache.dtype))


@triton.jit
def _store_kernel(K, V, KC, VC, SLOTS, skn, skh, svn, svh, sc_blk, sc_tok, sc_head, NH, HEAD_DIM, BLOCK_SIZE,
                  BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    n = tl.program_id(0)
    slot = tl.load(SLOTS + n).to(tl.int64)
    if slot >= 0:
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        ok = (h < NH) & (d < HEAD_DIM)
        dst = (slot // BLOCK_SIZE) * sc_blk + (slot % BLOCK_SIZE) * sc_tok + h * sc_head + d
        k = tl.load(K + n * skn + h * skh + d, mask=ok)
        v = tl.load(V + n * svn + h * svh + d, mask=ok)
        tl.store(KC + dst, k.to(KC.dtype.element_ty), mask=ok)
        tl.store(VC + dst, v.to(VC.dtype.element_ty), mask=ok)


def store_kv_triton(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k, v))
    N, K, Dh = k.shape
    if N == 0:
        return
    _store_kernel[(N,)](k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), K, Dh, k_cache.shape[1],
                        BLOCK_H=triton.next_power_of_2(K), BLOCK_D=triton.next_power_of_2(Dh))  # fmt: skip


def store_kv(
    k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor, backend: str = "auto"
) -> None:
    """Write new keys/values k, v (N, K, Dh) to the cache slots slot_mapping (N,) (block * block_size +
    offset; -1 = skip, e.g. padding), in place. The caches (num_blocks, block_size, K, Dh) must be contiguous
    (as allocated); slots must be distinct."""
    _check_cache("store_kv", k_cache, v_cache)
    if k.dim() != 3 or k.shape != v.shape or k.shape[1:] != k_cache.shape[2:]:
        raise ScratchLMError(
            f"store_kv: k and v must be (N, K, Dh) = (N, {k_cache.shape[2]}, {k_cache.shape[3]}), "
            f"got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if slot_mapping.shape != k.shape[:1] or slot_mapping.is_floating_point():
        raise ScratchLMError(f"store_kv: slot_mapping must be integer ({k.shape[0]},), got {tuple(slot_mapping.shape)}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ScratchLMError("store_kv: the caches must be contiguous")
    reason = triton_usable(k) or ("" if k_cache.dtype in DTYPES else f"cache dtype {k_cache.dtype}")
    name = choose("store_kv", backend, BACKENDS, reason, "reference", k.is_cuda)
    (store_kv_triton if name == "triton" else store_kv_reference)(k, v, k_cache, v_cache, slot_mapping)


# ---------------------------------------------------------------------- gather and the reference
def gather_kv(
    k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor, max_len: int | None = None
) -> tuple[Tensor, Tensor]:
    """Each sequence's keys and values as dense (B, T_max, K, Dh) tensors, T_max = max_len or
    max(context_lens) (a host sync on CUDA: pass max_len to avoid it). Zeros past a row's length and in
    blocks the table marks -1. For prefill over a cached prefix: the runner attends to these with a mask."""
    _check_cache("gather_kv", k_cache, v_cache)
    B = block_tables.shape[0]
    _check_tables("gather_kv", B, block_tables, context_lens, k_cache.device)
    _, bs, K, Dh = k_cache.shape
    T = max_len if max_len is not None else (int(context_lens.max()) if B else 0)
    if T > block_tables.shape[1] * bs:
        raise ScratchLMError(f"gather_kv: {T} tokens need more than the tables' {block_tables.shape[1]} blocks")
    t = torch.arange(T, device=k_cache.device)
    blocks = block_tables[:, t // bs].long()  # (B, T)
    valid = (t < context_lens[:, None]) & (blocks >= 0)  # (B, T)
    slots = blocks.clamp_min(0) * bs + t % bs  # (B, T)
    k = k_cache.reshape(-1, K, Dh)[slots]  # (B, T, K, Dh)
    v = v_cache.reshape(-1, K, Dh)[slots]
    hide = ~valid[:, :, None, None]
    return k.masked_fill(hide, 0), v.masked_fill(hide, 0)


def paged_attention_reference(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float | None = None,
    window: int = 0,
) -> Tensor:
    """Decode attention by gathering the cache into dense tensors: q (B, H, Dh) -> (B, H, Dh) in q's dtype."""
    B, H, Dh = q.shape
    K = k_cache.shape[2]
    scale = 1.0 / math.sqrt(Dh) if scale is None else scale
    acc = _acc_dtype(q)
    k, v = gather_kv(k_cache, v_cache, block_tables, context_lens)  # (B, T, K, Dh)
    T = k.shape[1]
    qg = q.to(acc).view(B, K, H // K, Dh)  # (B, K, G, Dh): query head h = kv head h // G, member h % G
    scores = torch.einsum("bkgd,btkd->bkgt", qg, k.to(acc)) * scale  # (B, K, G, T)
    t = torch.arange(T, device=q.device)
    ctx = context_lens[:, None].long()  # (B, 1)
    visible = t < ctx  # (B, T)
    if window:
        visible &= t >= ctx - window
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    p = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row without context: all -inf -> NaN -> 0
    out = torch.einsum("bkgt,btkd->bkgd", p, v.to(acc))  # (B, K, G, Dh)
    return out.reshape(B, H, Dh).to(q.dtype)


# ---------------------------------------------------------------------- the Triton decode kernel
@triton.jit
def _decode_kernel(Q, KC, VC, BT, CTX, O, O_PART, M_PART, L_PART,
                   sqb, sqh, sk_blk, sk_tok, sk_head, sv_blk, sv_tok, sv_head, sbt, sob, soh,
                   H, G, HEAD_DIM, qk_scale, window,
                   BLOCK_SIZE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
                   NUM_SPLITS: tl.constexpr):  # fmt: skip
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(CTX + b).to(tl.int32)
    start = tl.maximum(ctx - window, 0)  # first visible position (window = 2^30 when off)
    first = start // BLOCK_SIZE
    n_blocks = (ctx + BLOCK_SIZE - 1) // BLOCK_SIZE - first  # blocks holding a visible token
    per_split = (n_blocks + NUM_SPLITS - 1) // NUM_SPLITS
    lo = first + split * per_split
    hi = tl.minimum(lo + per_split, first + n_blocks)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    tok = tl.arange(0, BLOCK_T)
    heads = kvh * G + g  # (BG,) query heads of this kv head
    g_ok, d_ok = g < G, d < HEAD_DIM
    q = tl.load(Q + b * sqb + heads[:, None] * sqh + d[None, :], mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    q = q.to(tl.float32) * qk_scale  # (BG, BD), base-2 logits after the dot

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for blk in range(lo, hi):
        phys = tl.load(BT + b * sbt + blk).to(tl.int64)
        pos = blk * BLOCK_SIZE + tok  # (BT,)
        t_ok = (tok < BLOCK_SIZE) & (pos < ctx) & (pos >= start)
        kv_ok = t_ok[:, None] & d_ok[None, :]
        k = tl.load(KC + phys * sk_blk + tok[:, None] * sk_tok + kvh * sk_head + d[None, :], mask=kv_ok, other=0.0)
        v = tl.load(VC + phys * sv_blk + tok[:, None] * sv_tok + kvh * sv_head + d[None, :], mask=kv_ok, other=0.0)
        k, v = k.to(tl.float32), v.to(tl.float32)  # (BT, BD)
        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # (BG, BT)
        s = tl.where(t_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every block in [lo, hi) has a visible token
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)  # (BG, BD)
        m_i = m_new

    out_ok = g_ok[:, None] & d_ok[None, :]
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # l = 0: no context, zeros
        tl.store(O + b * sob + heads[:, None] * soh + d[None, :], out.to(O.dtype.element_ty), mask=out_ok)
    else:  # partials (B, H, NUM_SPLITS[, Dh]) for _merge_splits
        row = (b * H + heads) * NUM_SPLITS + split  # (BG,)
        tl.store(O_PART + row[:, None] * HEAD_DIM + d[None, :], acc, mask=out_ok)
        tl.store(M_PART + row, m_i, mask=g_ok)
        tl.store(L_PART + row, l_i, mask=g_ok)


def _merge_splits(o_part: Tensor, m_part: Tensor, l_part: Tensor) -> Tensor:
    """Combine per-split (unnormalised output (B, H, S, Dh), base-2 max and sum (B, H, S)) -> (B, H, Dh)."""
    m = m_part.amax(-1, keepdim=True)  # (B, H, 1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all splits empty: weights 0 below
    w = torch.exp2(m_part - m)  # (B, H, S); 0 for an empty split (m = -inf)
    den = (w * l_part).sum(-1, keepdim=True)  # (B, H, 1)
    num = (w[..., None] * o_part).sum(-2)  # (B, H, Dh)
    return num / torch.where(den > 0, den, torch.ones_like(den))


def default_num_splits(q: Tensor, num_kv_heads: int, max_blocks: int) -> int:
    """Splits of the context so that B * K * splits programs fill the GPU (2 per SM); 1 under the interpreter."""
    if not q.is_cuda:
        return 1
    programs = q.shape[0] * num_kv_heads
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    return max(1, min(-(-2 * sms // max(programs, 1)), max_blocks, MAX_SPLITS))


def paged_attention_triton(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float | None = None,
    window: int = 0,
    num_splits: int | None = None,
) -> Tensor:
    """The Triton decode kernel: same contract as `paged_attention_reference`. num_splits: programs per
    (sequence, kv head), each over a share of the context (None: `default_num_splits`)."""
    B, H, Dh = q.shape
    _, bs, K, _ = k_cache.shape
    q = q if q.stride(-1) == 1 else q.contiguous()
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ScratchLMError("paged_attention: the caches need unit stride in the head dim")
    out = torch.empty(B, H, Dh, dtype=q.dtype, device=q.device)
    if B == 0:
        return out
    S = num_splits or default_num_splits(q, K, block_tables.shape[1])
    qk_scale = (1.0 / math.sqrt(Dh) if scale is None else scale) * LOG2E
    if S > 1:
        o_part = torch.empty(B, H, S, Dh, dtype=torch.float32, device=q.device)
        m_part = torch.empty(B, H, S, dtype=torch.float32, device=q.device)
        l_part = torch.empty(B, H, S, dtype=torch.float32, device=q.device)
    else:
        o_part = m_part = l_part = out  # unused
    G = H // K
    BT, BG, BD = triton.next_power_of_2(bs), triton.next_power_of_2(G), triton.next_power_of_2(Dh)
    warps = 1 if INTERPRET else (8 if BG * BT * BD >= 16384 else 4)
    _decode_kernel[(B, K, S)](q, k_cache, v_cache, block_tables, context_lens, out, o_part, m_part, l_part,
                              q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
                              block_tables.stride(0), out.stride(0), out.stride(1), H, G, Dh, qk_scale, window or 2**30,
                              BLOCK_SIZE=bs, BLOCK_T=BT, BLOCK_G=BG, BLOCK_D=BD, NUM_SPLITS=S,
                              num_warps=warps)  # fmt: skip
    if S > 1:
        out.copy_(_merge_splits(o_part, m_part, l_part))
    return out


def triton_unsupported(q: Tensor, k_cache: Tensor) -> str:
    """'' if the decode kernel takes these inputs, else why not."""
    reason = triton_usable(q)
    if reason:
        return reason
    if q.dtype not in DTYPES or k_cache.dtype not in DTYPES:
        return f"dtypes {q.dtype} / {k_cache.dtype} (the kernel takes float16, bfloat16, float32)"
    if q.shape[-1] > MAX_HEAD_DIM or k_cache.shape[1] > MAX_BLOCK_SIZE:
        return f"head dim {q.shape[-1]} or block size {k_cache.shape[1]} above {MAX_HEAD_DIM} / {MAX_BLOCK_SIZE}"
    return ""


def paged_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float | None = None,
    window: int = 0,
    backend: str = "auto",
) -> Tensor:
    """Decode attention of one query per sequence over its paged keys/values: q (B, H, Dh), caches
    (num_blocks, block_size, K, Dh), block_tables (B, max_blocks), context_lens (B,) -> (B, H, Dh).
    `scale` defaults to 1 / sqrt(Dh); `window` > 0: only the last `window` positions are seen."""
    check_inputs(q, k_cache, v_cache, block_tables, context_lens, window)
    cpu_reason = cpu_unsupported(q, k_cache, v_cache, block_tables, context_lens)
    fallback = "tiled" if q.is_cuda or cpu_reason else "cpu"
    name = choose("paged_attention", backend, BACKENDS, triton_unsupported(q, k_cache), fallback, q.is_cuda)
    if name == "cpu" and cpu_reason:
        raise ScratchLMError(f"paged_attention backend 'cpu' cannot run here: {cpu_reason}")
    fns = {"triton": paged_attention_triton, "cpu": paged_attention_cpu, "tiled": paged_attention_tiled}
    fn = fns.get(name, paged_attention_reference)
    return fn(q, k_cache, v_cache, block_tables, context_lens, scale, window)
