"""The one dispatch point for softmax attention: attention(q, k, v, causal=..., backend=...).

    from scratchlm.kernels import attention
    y = attention(q, k, v, causal=True)                       # q (B, H, T, Dh), k/v (B, K, S, Dh) -> (B, H, T, Dh)
    y = attention(q, k, v, causal=True, backend="reference")  # FlashAttention-2 tiled in PyTorch (O(T) memory)

Backends: "triton" (FlashAttention-2 kernels, `flash_triton.py`), "sdpa" (torch's
F.scaled_dot_product_attention), "reference" (the tiled PyTorch FlashAttention-2, `flash_ref.py`),
"naive" (the full T x S score matrix) and "auto": triton on CUDA when triton is importable and the
inputs are supported (fp16/bf16/fp32, head dim 16..128), else sdpa; the reason is logged once when
CUDA tensors fall back. Causal masking is top-left aligned (query i sees keys j <= i), as torch's
`is_causal`. Grouped-query attention: H % K == 0, query head h reads kv head h // (H / K).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from scratchlm.errors import ScratchLMError
from scratchlm.kernels._triton import log_once, triton_usable
from scratchlm.kernels.dispatch import choose
from scratchlm.kernels.flash_ref import flash_attention_reference, naive_attention
from scratchlm.kernels.flash_triton import DTYPES, MAX_HEAD_DIM, MIN_HEAD_DIM, flash_attention_triton

BACKENDS = ("auto", "triton", "sdpa", "reference", "naive")


def check_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Shapes, dtypes and devices every backend needs; a ScratchLMError naming the mismatch otherwise."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ScratchLMError(
                f"attention: {name} must be 4-d (B, heads, time, head_dim), got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise ScratchLMError(f"attention: {name} must be a floating-point tensor, got {t.dtype}")
    if k.shape[:3] != v.shape[:3]:
        raise ScratchLMError(f"attention: k and v differ in batch, heads or time: {tuple(k.shape)} vs {tuple(v.shape)}")
    (B, H, T, Dh), (Bk, K, S, Dk) = q.shape, k.shape
    if B != Bk or Dh != Dk:
        raise ScratchLMError(f"attention: q {tuple(q.shape)} and k/v {tuple(k.shape)} differ in batch or head dim")
    if K == 0 or H % K:
        raise ScratchLMError(f"attention: query heads {H} must be a multiple of kv heads {K}")
    if T == 0 or S == 0 or Dh == 0:
        raise ScratchLMError(f"attention: empty input, q {tuple(q.shape)}, k/v {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ScratchLMError(f"attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ScratchLMError(f"attention: q, k, v are on different devices: {q.device}, {k.device}, {v.device}")


def triton_unsupported(q: Tensor, v: Tensor | None = None) -> str:
    """'' if the Triton kernels take these inputs, else why not."""
    reason = triton_usable(q)
    if reason:
        return reason
    if v is not None and v.shape[-1] != q.shape[-1]:
        return f"value head dim {v.shape[-1]} != query head dim {q.shape[-1]}"
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} (the kernels take float16, bfloat16, float32)"
    if not MIN_HEAD_DIM <= q.shape[-1] <= MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} (the kernels take {MIN_HEAD_DIM}..{MAX_HEAD_DIM})"
    return ""


def _unit_stride(t: Tensor) -> Tensor:
    """The kernels read any (batch, head, time) strides but need the head dim contiguous."""
    if t.stride(-1) == 1:
        return t
    log_once("attention: an input with non-unit stride in the head dim is copied to contiguous for the Triton kernels")
    return t.contiguous()


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    backend: str = "auto",
    scale: float | None = None,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """softmax(q k^T * scale [+ causal mask] [+ mask]) v: q (B, H, T, Dh), k (B, K, S, Dh), v (B, K, S, Dv)
    -> (B, H, T, Dv).

    `scale` defaults to 1 / sqrt(Dh). `mask`: bool, True = may attend, broadcastable to (B, H, T, S).
    The FlashAttention backends ("triton", "reference") take unmasked attention without dropout; a call
    with a mask or dropout goes to SDPA for them ("naive" and "sdpa" take everything). Raises
    ScratchLMError on mismatched inputs, an unknown backend, or backend="triton" where the kernels cannot
    run (CPU tensors, triton missing, unsupported head dim)."""
    check_inputs(q, k, v)
    flash_ok = mask is None and dropout_p == 0.0 and v.shape[-1] == q.shape[-1]
    if flash_ok:
        name = choose("attention", backend, BACKENDS, triton_unsupported(q, v), "sdpa", q.is_cuda)
    elif backend not in BACKENDS:
        raise ScratchLMError(f"unknown attention backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    else:  # masked or dropout: only the full-score backends take it
        name = backend if backend in ("naive", "sdpa") else "sdpa"
    if name == "triton":
        return flash_attention_triton(_unit_stride(q), _unit_stride(k), _unit_stride(v), causal, scale)[0]
    if name == "reference":
        return flash_attention_reference(q, k, v, causal, scale)[0]
    if name == "naive":
        return naive_attention(q, k, v, causal, scale, mask, dropout_p)
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal, scale=scale, enable_gqa=gqa
    )


def attention_with_lse(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, backend: str = "reference", scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """(O, L): the output and the log-sum-exp (B, H, T) of the FlashAttention backends ("triton", "reference")."""
    check_inputs(q, k, v)
    if backend == "triton":
        reason = triton_unsupported(q)
        if reason:
            raise ScratchLMError(f"attention backend 'triton' cannot run here: {reason}")
        return flash_attention_triton(_unit_stride(q), _unit_stride(k), _unit_stride(v), causal, scale)
    if backend == "reference":
        return flash_attention_reference(q, k, v, causal, scale)
    raise ScratchLMError(f"attention_with_lse: backend must be 'triton' or 'reference', got {backend!r}")
