"""Weight-only int8 / int4 matmul in Triton: y = x W^T (+ b), W dequantised in registers inside the K loop.

    y = quant_matmul(x, 4, qweight, scale, zero, group_size, bias)   # Int4Linear's tensors, CUDA
    y = quant_matmul(x, 8, qweight, scale, None, 0, bias)            # Int8Linear's tensors

One program per (BLOCK_M rows of x, BLOCK_N outputs). int4: the K loop walks one group at a time: the
program loads the group's packed bytes (BLOCK_N, g/2), splits the nibbles (low = elements 0..g/2-1 of the
group, high = g/2..g-1, quant.py's layout), dequantises with the group's scale and zero, and multiplies
with the two matching halves of x (fp32 accumulate). int8: BLOCK_K inputs a step, the per-channel scale
applied to the accumulator once at the end. Only the packed bytes travel from memory.

Under `TRITON_INTERPRET=1` the kernel runs on CPU tensors (tests); every tile is fp32 there (the
interpreter's tl.dot on bf16 is wrong). Group sizes below 32 (a half-group under tl.dot's 16) and shapes
the kernel does not take are refused by `triton_unsupported` and the module uses its reference path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scratchlm.errors import ScratchLMError
from scratchlm.kernels._triton import tl, triton, triton_usable

BLOCK_M, BLOCK_N, BLOCK_K = 16, 64, 64


@triton.jit
def _int4_kernel(X, Q, S, Z, B, Y, M, N, K, sxm, HAS_BIAS: tl.constexpr, GROUP: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    pm, pn = tl.program_id(0), tl.program_id(1)
    rows = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    half = tl.arange(0, GROUP // 2)
    r_ok, c_ok = rows < M, cols < N
    ng = K // GROUP
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(0, ng):
        k0 = g * GROUP
        packed = tl.load(Q + cols[:, None] * (K // 2) + g * (GROUP // 2) + half[None, :], mask=c_ok[:, None], other=0)
        s = tl.load(S + cols * ng + g, mask=c_ok, other=0.0)  # (BLOCK_N,)
        z = tl.load(Z + cols * ng + g, mask=c_ok, other=0).to(tl.float32)
        lo = ((packed & 15).to(tl.float32) - z[:, None]) * s[:, None]  # (BLOCK_N, g/2): elements 0..g/2-1
        hi = ((packed >> 4).to(tl.float32) - z[:, None]) * s[:, None]  # elements g/2..g-1
        x_lo = tl.load(X + rows[:, None] * sxm + k0 + half[None, :], mask=r_ok[:, None], other=0.0).to(tl.float32)
        x_hi = tl.load(X + rows[:, None] * sxm + k0 + GROUP // 2 + half[None, :], mask=r_ok[:, None], other=0.0)
        acc += tl.dot(x_lo, tl.trans(lo))
        acc += tl.dot(x_hi.to(tl.float32), tl.trans(hi))
    if HAS_BIAS:
        acc += tl.load(B + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * N + cols[None, :], acc, mask=r_ok[:, None] & c_ok[None, :])


@triton.jit
def _int8_kernel(X, Q, S, B, Y, M, N, K, sxm, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    pm, pn = tl.program_id(0), tl.program_id(1)
    rows = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    r_ok, c_ok = rows < M, cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + ks) < K
        q = tl.load(Q + cols[:, None] * K + k0 + ks[None, :], mask=c_ok[:, None] & k_ok[None, :], other=0)
        x = tl.load(X + rows[:, None] * sxm + k0 + ks[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(x.to(tl.float32), tl.trans(q.to(tl.float32)))
    acc = acc * tl.load(S + cols, mask=c_ok, other=0.0)[None, :]  # the channel's scale, once
    if HAS_BIAS:
        acc += tl.load(B + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * N + cols[None, :], acc, mask=r_ok[:, None] & c_ok[None, :])


def triton_unsupported(x: Tensor, qweight: Tensor, bits: int = 8, group_size: int = 0) -> str:
    """'' if the Triton kernel can take these inputs, else why not."""
    why = triton_usable(x)
    if why:
        return why
    if qweight.device != x.device:
        return f"weights on {qweight.device}, activations on {x.device}"
    if bits == 4 and (group_size < 32 or group_size & (group_size - 1)):
        return f"int4 group size {group_size} (the kernel takes powers of two >= 32)"
    return ""


def quant_matmul(
    x: Tensor,
    bits: int,
    qweight: Tensor,
    scale: Tensor,
    zero: Tensor | None,
    group_size: int,
    bias: Tensor | None = None,
) -> Tensor:
    """x (..., K) @ W^T (+ bias) -> (..., N) in x's dtype, W in quant.py's int8 / int4 form."""
    why = triton_unsupported(x, qweight, bits, group_size)
    if why:
        raise ScratchLMError(f"quant_matmul: {why}")
    k = x.shape[-1]
    n = qweight.shape[0]
    expect = (n, k) if bits == 8 else (n, k // 2)
    if bits not in (4, 8) or tuple(qweight.shape) != expect or (bits == 4 and k % group_size):
        raise ScratchLMError(
            f"quant_matmul: bits={bits} group={group_size} weights {tuple(qweight.shape)} "
            f"do not fit inputs of width {k}"
        )
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=torch.float32)
    b = bias.detach() if bias is not None else y  # a dummy pointer when there is no bias
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
    s = scale.float().contiguous()
    if bits == 4:
        _int4_kernel[grid](
            x2, qweight.contiguous(), s, zero.contiguous(), b, y, m, n, k, x2.stride(0),
            HAS_BIAS=bias is not None, GROUP=group_size, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        )  # fmt: skip
    else:
        _int8_kernel[grid](
            x2, qweight.contiguous(), s, b, y, m, n, k, x2.stride(0),
            HAS_BIAS=bias is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
        )  # fmt: skip
    return y.to(x.dtype).view(*x.shape[:-1], n)
