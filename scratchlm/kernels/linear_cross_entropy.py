"""Output head + cross-entropy without the full (tokens x vocab) logits, forward or backward.

    loss = linear_cross_entropy(h, weight, targets, ignore_index=-100, chunk=1024, backend="auto")
    # h (N, D) final hidden states, weight (V, D) the head, targets (N,) -> mean loss over kept targets

Unfused, the head writes N x V logits, the loss reads them, and autograd keeps them (plus an fp32
copy and the N x V gradient) until the backward. Here (as Liger Kernel's fused linear
cross-entropy, Hsu et al. 2024) the forward walks chunks of `chunk` rows: logits of the chunk, its
loss, and at once its gradient softmax - onehot, which gives the chunk's dh rows and its share of
dW; the chunk's logits are then dropped. The backward only scales the stored dh and dW by the
incoming gradient. Peak extra memory: chunk x V fp32 logits + dh (N x D) + dW (V x D, fp32),
instead of several N x V buffers. The cost: the gradients are computed even when no backward
follows (use the unfused path for evaluation).

Backends: "triton" (the matmuls stay cuBLAS; a Triton kernel does each chunk's row-wise
log-sum-exp, loss and in-place gradient in one pass over the logits), "reference" (the same
chunks in PyTorch), "naive" (full logits + torch's `F.cross_entropy`), "auto" (triton on CUDA, else
reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from scratchlm.errors import ScratchLMError
from scratchlm.kernels._triton import INTERPRET, tl, triton, triton_usable
from scratchlm.kernels.dispatch import choose

BACKENDS = ("auto", "triton", "reference", "naive")


def _ce_chunk_torch(logits: Tensor, targets: Tensor, keep: Tensor, scale: float) -> Tensor:
    """Per-row loss of fp32 `logits` (c, V); overwrites `logits` with scale * (softmax - onehot),
    zero on rows that are not kept."""
    lse = torch.logsumexp(logits, dim=-1)  # (c,)
    rows = torch.arange(len(targets), device=logits.device)
    loss = torch.where(keep, lse - logits[rows, targets], 0.0)
    logits.sub_(lse[:, None]).exp_()  # softmax, in place
    logits[rows, targets] -= 1.0
    logits.mul_(keep.to(logits.dtype)[:, None] * scale)
    return loss


@triton.jit
def _ce_chunk_kernel(LOGITS, TARGETS, LOSS, s_row, V, ignore_index, scale, BLOCK_V: tl.constexpr):
    """One row: online max / sum over V in blocks, the loss, then the gradient written over the logits."""
    row = tl.program_id(0)
    base = LOGITS + row * s_row
    target = tl.load(TARGETS + row)
    m = float("-inf")
    total = 0.0
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        total = total * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(total)
    keep = target != ignore_index
    safe_target = tl.where(keep, target, 0)
    picked = tl.load(base + safe_target).to(tl.float32)
    tl.store(LOSS + row, tl.where(keep, lse - picked, 0.0))
    g_scale = tl.where(keep, scale, 0.0)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32)
        g = tl.exp(x - lse) - tl.where(cols == safe_target, 1.0, 0.0)
        tl.store(base + cols, (g * g_scale).to(LOGITS.dtype.element_ty), mask=cols < V)


def _ce_chunk_triton(logits: Tensor, targets: Tensor, ignore_index: int, scale: float) -> Tensor:
    c, V = logits.shape
    loss = torch.empty(c, dtype=torch.float32, device=logits.device)
    block = min(triton.next_power_of_2(V), 256 if INTERPRET else 4096)
    _ce_chunk_kernel[(c,)](logits, targets, loss, logits.stride(0), V, ignore_index, scale, BLOCK_V=block)
    return loss


class LinearCrossEntropy(torch.autograd.Function):
    """(h (N, D), weight (V, D), targets (N,), ignore_index, chunk, use_triton) -> mean loss."""

    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index: int, chunk: int, use_triton: bool):
        N = h.shape[0]
        keep_all = targets != ignore_index
        n_kept = int(keep_all.sum())
        scale = 1.0 / max(n_kept, 1)  # the gradient of the mean
        dh = torch.empty_like(h)
        acc = torch.promote_types(h.dtype, torch.float32)  # fp32 logits and sums; fp64 stays fp64
        dw = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        loss = torch.zeros((), dtype=acc, device=h.device)
        for r0 in range(0, N, chunk):
            hc, tc = h[r0 : r0 + chunk], targets[r0 : r0 + chunk]  # (c, D), (c,)
            logits = (hc @ weight.T).to(acc)  # (c, V): the only vocabulary-sized buffer
            if use_triton:
                loss += _ce_chunk_triton(logits, tc, ignore_index, scale).sum()
            else:
                kc = keep_all[r0 : r0 + chunk]
                loss += _ce_chunk_torch(logits, torch.where(kc, tc, 0), kc, scale).sum()
            # logits now hold d loss / d logits of the chunk
            dh[r0 : r0 + chunk] = (logits.to(weight.dtype) @ weight).to(h.dtype)
            dw += logits.T @ hc.to(acc)
        ctx.save_for_backward(dh, dw)
        ctx.w_dtype = weight.dtype
        return loss * scale

    @staticmethod
    def backward(ctx, grad):
        dh, dw = ctx.saved_tensors
        return dh * grad.to(dh.dtype), (dw * grad).to(ctx.w_dtype), None, None, None, None


def linear_cross_entropy_naive(h: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """The plain reference: the full logits, in fp32 at least, and torch's cross-entropy (mean over kept targets)."""
    logits = h @ weight.T  # (..., V)
    V = logits.shape[-1]
    flat_t = targets.reshape(-1)
    x = logits.to(torch.promote_types(logits.dtype, torch.float32)).reshape(-1, V)  # (N, V)
    loss = F.cross_entropy(x, flat_t, ignore_index=ignore_index, reduction="sum")
    return loss / (flat_t != ignore_index).sum().clamp_min(1)  # 0, not nan, when every target is ignored


def linear_cross_entropy(
    h: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = -100, chunk: int = 1024, backend: str = "auto"
) -> Tensor:
    """Mean cross-entropy of logits h @ weight^T against `targets` (entries == ignore_index skipped).

    h (..., D), weight (V, D), targets (...) with h.shape[:-1] == targets.shape."""
    D = h.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != D:
        raise ScratchLMError(f"linear_cross_entropy: weight must be (V, {D}), got {tuple(weight.shape)}")
    if targets.shape != h.shape[:-1] or targets.dtype not in (torch.int32, torch.int64):
        raise ScratchLMError(
            f"linear_cross_entropy: targets must be integer with shape {tuple(h.shape[:-1])},"
            f" got {targets.dtype} {tuple(targets.shape)}"
        )
    if not (h.device == weight.device == targets.device):
        raise ScratchLMError(f"linear_cross_entropy: tensors on different devices: {h.device}, {weight.device}")
    if chunk < 1:
        raise ScratchLMError(f"linear_cross_entropy: chunk must be >= 1, got {chunk}")
    name = choose("linear_cross_entropy", backend, BACKENDS, triton_usable(h), "reference", h.is_cuda)
    if name == "naive":
        return linear_cross_entropy_naive(h, weight, targets, ignore_index)
    flat_h, flat_t = h.reshape(-1, D), targets.reshape(-1)
    return LinearCrossEntropy.apply(flat_h, weight, flat_t, ignore_index, chunk, name == "triton")
