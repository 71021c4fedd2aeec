"""RMSNorm forward + backward: y = x / sqrt(mean(x^2) + eps) * w (+ b), fused.

    y = rms_norm(x, weight, bias=None, eps=1e-5, backend="auto")   # x (..., D), weight (D,)

Backends: "triton" (one program per row forward; backward programs each own a block of rows and
write one partial dW), "reference" (`RMSNormFunction`, the same computation in PyTorch: it saves
x and the per-row 1/rms only, not autograd's chain of intermediates), "naive" (plain autograd, as
`scratchlm.model.norms.RMSNorm`), "auto" (triton on CUDA, else reference). Statistics in fp32;
y in x's dtype; dW, db in the parameters' dtype.

Backward, with r = (mean(x^2) + eps)^-1/2 and g = dy * w:  dx = r g - x r^3 mean(g x),
dw = sum over rows of dy x r,  db = sum over rows of dy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scratchlm.errors import ScratchLMError
from scratchlm.kernels._triton import INTERPRET, tl, triton, triton_usable
from scratchlm.kernels.dispatch import choose

BACKENDS = ("auto", "triton", "reference", "naive")
MAX_DIM = 65536  # one row must fit in a program's registers / shared memory


def _acc(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)  # fp32 statistics; fp64 stays fp64


def rms_norm_naive(x: Tensor, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    x32 = x.to(_acc(x))
    y = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.to(x32.dtype)
    if bias is not None:
        y = y + bias.to(x32.dtype)
    return y.to(x.dtype)


class RMSNormFunction(torch.autograd.Function):
    """(x (N, D), weight (D,), bias (D,) | None, eps) -> y (N, D): the PyTorch reference."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        x32 = x.to(_acc(x))
        rstd = torch.rsqrt(x32.pow(2).mean(dim=-1) + eps)  # (N,)
        y = x32 * rstd[:, None] * weight.to(x32.dtype)
        if bias is not None:
            y = y + bias.to(x32.dtype)
        ctx.save_for_backward(x, weight, rstd)
        ctx.has_bias = bias is not None
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        x32, dy32 = x.to(rstd.dtype), dy.to(rstd.dtype)
        xhat = x32 * rstd[:, None]  # (N, D)
        g = dy32 * weight.to(rstd.dtype)
        dx = rstd[:, None] * (g - xhat * (g * xhat).mean(dim=-1, keepdim=True))
        dw = (dy32 * xhat).sum(0).to(weight.dtype)
        db = dy32.sum(0).to(weight.dtype) if ctx.has_bias else None
        return dx.to(x.dtype), dw, db, None


@triton.jit
def _fwd_kernel(X, W, B, Y, RSTD, sx, sy, D, eps, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    ok = cols < D
    x = tl.load(X + row * sx + cols, mask=ok, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / D + eps)
    y = x * rstd * tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(B + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + row * sy + cols, y.to(Y.dtype.element_ty), mask=ok)
    tl.store(RSTD + row, rstd)


@triton.jit
def _bwd_kernel(X, W, DY, RSTD, DX, DW_PART, sx, sdy, sdx, N, D, rows_per_program, BLOCK_D: tl.constexpr):
    """dX of rows [pid * rows_per_program, ...) and their partial dW (one row of DW_PART per program),
    so dW needs no atomics: the host sums DW_PART over programs."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    ok = cols < D
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    first = pid * rows_per_program
    for row in range(first, tl.minimum(first + rows_per_program, N)):
        x = tl.load(X + row * sx + cols, mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * sdy + cols, mask=ok, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        xhat = x * rstd
        g = dy * w
        dx = rstd * (g - xhat * (tl.sum(g * xhat, 0) / D))
        tl.store(DX + row * sdx + cols, dx.to(DX.dtype.element_ty), mask=ok)
        dw += dy * xhat
    tl.store(DW_PART + pid * D + cols, dw, mask=ok)


def _rows(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class RMSNormTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        x = _rows(x)
        N, D = x.shape
        y = torch.empty_like(x)
        rstd = torch.empty(N, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(D)
        warps = 1 if INTERPRET else min(max(block // 256, 1), 16)
        _fwd_kernel[(N,)](x, weight, weight if bias is None else bias, y, rstd, x.stride(0), y.stride(0), D, eps,
                          BLOCK_D=block, HAS_BIAS=bias is not None, num_warps=warps)  # fmt: skip
        ctx.save_for_backward(x, weight, rstd)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        dy = _rows(dy)
        N, D = x.shape
        # A few programs per SM, each walking a block of rows (Triton's layer-norm tutorial does the same).
        programs = min(N, 4 if INTERPRET else 4 * torch.cuda.get_device_properties(x.device).multi_processor_count)
        rows_per_program = triton.cdiv(N, programs)
        dx = torch.empty_like(x)
        dw_part = torch.empty(programs, D, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(D)
        warps = 1 if INTERPRET else min(max(block // 256, 1), 16)
        _bwd_kernel[(programs,)](x, weight, dy, rstd, dx, dw_part, x.stride(0), dy.stride(0), dx.stride(0), N, D,
                                 rows_per_program, BLOCK_D=block, num_warps=warps)  # fmt: skip
        db = dy.float().sum(0).to(weight.dtype) if ctx.has_bias else None
        return dx, dw_part.sum(0).to(weight.dtype), db, None


def rms_norm(x: Tensor, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-5, backend: str = "auto") -> Tensor:
    """RMSNorm over the last dim of x (..., D) with gain `weight` (D,) and optional `bias` (D,)."""
    D = x.shape[-1]
    if weight.shape != (D,) or (bias is not None and bias.shape != (D,)):
        raise ScratchLMError(f"rms_norm: weight/bias must have shape ({D},), got {tuple(weight.shape)}")
    if x.device != weight.device:
        raise ScratchLMError(f"rms_norm: x on {x.device} but weight on {weight.device}")
    reason = triton_usable(x) or (f"row length {D} > {MAX_DIM}" if D > MAX_DIM else "")
    name = choose("rms_norm", backend, BACKENDS, reason, "reference", x.is_cuda)
    if name == "naive":
        return rms_norm_naive(x, weight, bias, eps)
    fn = RMSNormTriton if name == "triton" else RMSNormFunction
    return fn.apply(x.reshape(-1, D), weight, bias, eps).view(x.shape)
