"""Paged decode attention on CPU in PyTorch ops: flash-decoding over tiles of blocks, no full gather.

The reference (`paged_attention_reference`) gathers every row's keys and values into dense (B, T_max, K, Dh)
tensors, padded to the longest row, then attends. At decode time with many rows that is most of a step:
64 rows of ~400 tokens of SmolLM2 (3 kv heads x 64 dims, fp32) copy ~60 MB per layer and read it again,
padded to the longest row, while the weights of the whole layer are 14 MB. Here the blocks are walked
in tiles of `tile` tokens with an online softmax (running max m, sum l, accumulator o, in fp32):

    for each tile j:   rows that still have tokens in it (short rows drop out; a window skips early tiles)
        k, v = their blocks of the tile                        # (R, t, K, Dh): a gather small enough for cache
        s = q . k * scale, masked past each row's length        # (R, K, G, t)
        m' = max(m, max s);  o = o e^(m - m') + e^(s - m') v;  l = l e^(m - m') + sum e^(s - m')

so each cached key and value is read once from memory, rows are not padded to the longest, and the
temporaries stay near cache size (`tile_bytes`). One tile covers the whole context at batch 1, where this
is the reference's gather plus one softmax. Equal to the reference within fp32 rounding (tests).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TILE_BYTES = 16 * 2**20  # keys + values of one tile over its rows: about what a CPU's last-level cache holds


def paged_attention_tiled(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float | None = None,
    window: int = 0,
    tile_bytes: int = TILE_BYTES,
) -> Tensor:
    """q (B, H, Dh), caches (num_blocks, block_size, K, Dh), block_tables (B, M), context_lens (B,) ->
    (B, H, Dh) in q's dtype; `window` > 0 sees only the last `window` positions."""
    B, H, Dh = q.shape
    _, bs, K, _ = k_cache.shape
    G = H // K
    scale = 1.0 / math.sqrt(Dh) if scale is None else scale
    acc_t = torch.promote_types(q.dtype, torch.float32)
    lens = context_lens.long()
    if B == 0:
        return q.new_zeros(B, H, Dh)
    longest = int(lens.max())
    first = (lens - window).clamp_min(0) if window else torch.zeros_like(lens)  # (B,) first visible position
    # tile length: a whole number of blocks whose keys and values of all rows fit in tile_bytes
    per_token = 2 * B * K * Dh * k_cache.element_size()
    tile = max(bs, tile_bytes // per_token // bs * bs)
    qg = q.to(acc_t).view(B, K, G, Dh) * scale  # (B, K, G, Dh): query head h reads kv head h // G
    m = torch.full((B, K, G), float("-inf"), dtype=acc_t, device=q.device)
    l = torch.zeros(B, K, G, dtype=acc_t, device=q.device)
    o = torch.zeros(B, K, G, Dh, dtype=acc_t, device=q.device)
    k_flat, v_flat = k_cache.view(-1, K, Dh), v_cache.view(-1, K, Dh)  # (slots, K, Dh)
    start = (int(first.min()) // bs) * bs
    for t0 in range(start, longest, tile):
        t1 = min(t0 + tile, longest)
        active = (lens > t0) & (first < t1)  # (B,) rows with visible tokens in [t0, t1)
        whole = bool(active.all())
        rows = None if whole else active.nonzero().squeeze(1)  # (R,)
        if rows is not None and rows.numel() == 0:
            continue
        pos = torch.arange(t0, t1, device=q.device)  # (t,)
        tables = block_tables[:, t0 // bs : -(-t1 // bs)] if whole else block_tables[rows, t0 // bs : -(-t1 // bs)]
        slots = tables.long().clamp_min(0)[:, (pos - t0 + t0 % bs) // bs] * bs + pos % bs  # (R, t)
        k = k_flat[slots].to(acc_t)  # (R, t, K, Dh)
        v = v_flat[slots].to(acc_t)
        r_lens = lens if whole else lens[rows]
        r_first = first if whole else first[rows]
        visible = (pos < r_lens[:, None]) & (pos >= r_first[:, None])  # (R, t)
        r_q = qg if whole else qg[rows]
        s = torch.matmul(r_q, k.permute(0, 2, 3, 1))  # (R, K, G, Dh) @ (R, K, Dh, t) -> (R, K, G, t)
        s = s.masked_fill(~visible[:, None, None, :], float("-inf"))
        r_m = m if whole else m[rows]
        m_new = torch.maximum(r_m, s.amax(-1))  # (R, K, G); finite: every active row sees a token here
        p = torch.exp(s - m_new[..., None])  # (R, K, G, t)
        corr = torch.exp(r_m - m_new)  # (R, K, G); exp(-inf) = 0 on a row's first tile
        v = v.masked_fill(~visible[:, :, None, None], 0.0)  # p = 0 there, but 0 * a stale NaN would be NaN
        pv = torch.matmul(p, v.permute(0, 2, 1, 3))  # (R, K, G, t) @ (R, K, t, Dh) -> (R, K, G, Dh)
        if whole:
            o = o * corr[..., None] + pv
            l = l * corr + p.sum(-1)
            m = m_new
        else:
            o[rows] = o[rows] * corr[..., None] + pv
            l[rows] = l[rows] * corr + p.sum(-1)
            m[rows] = m_new
    out = o / l[..., None]  # (B, K, G, Dh)
    out = out.nan_to_num(0.0)  # a row without context (0 / 0): zeros, as the reference
    return out.reshape(B, H, Dh).to(q.dtype)


# ---------------------------------------------------------------------- the compiled CPU kernel
try:  # built by setup.py where a C compiler exists (optional, like the BPE cores)
    from scratchlm.kernels import _paged_decode
except ImportError:  # pragma: no cover - depends on the install
    _paged_decode = None


CPU_TOKENS_PER_THREAD = 4096  # measured: 1 row x 300 tokens x 3 kv heads 0.03 ms on 1 thread, 0.09 ms on 2


def cpu_unsupported(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor) -> str:
    """'' if the compiled kernel (`_paged_decode.c`) takes these inputs, else why not."""
    if _paged_decode is None:
        return "the compiled kernel scratchlm.kernels._paged_decode is not built (no C compiler at install)"
    if q.device.type != "cpu":
        return f"tensors on {q.device}"
    if q.dtype != torch.float32 or k_cache.dtype != torch.float32:
        return f"dtypes {q.dtype} / {k_cache.dtype} (the compiled kernel takes float32)"
    H, bs = q.shape[1], k_cache.shape[1]
    if H > 128 or q.shape[2] > 256 or bs > 256:
        return f"{H} query heads > 128, head dim {q.shape[2]} > 256 or block size {bs} > 256"
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        return "a non-contiguous cache"
    return ""


def paged_attention_cpu(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float | None = None,
    window: int = 0,
) -> Tensor:
    """The compiled kernel (fp32, CPU, torch's intra-op thread count): same contract as the tiled version."""
    B, H, Dh = q.shape
    _, bs, K, _ = k_cache.shape
    scale = 1.0 / math.sqrt(Dh) if scale is None else scale
    q = q.contiguous()
    tables = block_tables.to(torch.int64).contiguous()
    lens = context_lens.to(torch.int64).contiguous()
    if B and int(lens.max()) > tables.shape[1] * bs:  # the C code trusts the tables to cover every row
        raise ValueError(f"paged attention: a context of {int(lens.max())} tokens exceeds the block tables")
    if B and (int(tables.max()) >= k_cache.shape[0]):
        raise ValueError(f"paged attention: a block id >= the pool's {k_cache.shape[0]} blocks")
    out = torch.empty_like(q)
    # starting a thread costs ~50-70 us: below ~4k (token, kv head) pairs one thread finishes sooner
    threads = torch.get_num_threads() if int(lens.sum()) * K >= CPU_TOKENS_PER_THREAD else 1
    _paged_decode.decode(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(), lens.data_ptr(), out.data_ptr(),
        B, H, K, Dh, bs, tables.shape[1], window, float(scale), threads,
    )  # fmt: skip
    return out
