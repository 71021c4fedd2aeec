"""SwiGLU's elementwise core, fused: h = silu(gate) * up (Shazeer 2020), forward and backward.

    h = swiglu(gate, up, backend="auto")   # gate, up (..., F) -> (..., F)

Unfused autograd keeps sigmoid(gate), silu(gate) and the product's inputs; the fused op keeps
only gate and up and recomputes the sigmoid in the backward (one read of gate/up/dh, one write of
dgate/dup). With s = sigmoid(g): d silu(g)/dg = s (1 + g (1 - s)), so
dgate = dh * up * s * (1 + g (1 - s)) and dup = dh * g * s.
Backends: "triton", "reference" (`SwiGLUFunction`, the same in PyTorch), "naive" (autograd),
"auto" (triton on CUDA, else reference). Math in fp32, results in the inputs' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from scratchlm.errors import ScratchLMError
from scratchlm.kernels._triton import tl, triton, triton_usable
from scratchlm.kernels.dispatch import choose

BACKENDS = ("auto", "triton", "reference", "naive")
BLOCK = 1024  # elements per program


def swiglu_naive(gate: Tensor, up: Tensor) -> Tensor:
    return F.silu(gate) * up


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        acc = torch.promote_types(gate.dtype, torch.float32)  # fp32 math; fp64 stays fp64
        g = gate.to(acc)
        ctx.save_for_backward(gate, up)
        return (F.silu(g) * up.to(acc)).to(gate.dtype)

    @staticmethod
    def backward(ctx, dh):
        gate, up = ctx.saved_tensors
        acc = torch.promote_types(gate.dtype, torch.float32)
        g, u, d = gate.to(acc), up.to(acc), dh.to(acc)
        # aten's silu_backward(x, g) = x * s (1 + g (1 - s)), the formula above, in one pass
        dgate = torch.ops.aten.silu_backward(d * u, g)
        return dgate.to(gate.dtype), (d * F.silu(g)).to(up.dtype)


@triton.jit
def _fwd_kernel(G, U, H, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    g = tl.load(G + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(H + offs, (g * tl.sigmoid(g) * u).to(H.dtype.element_ty), mask=ok)


@triton.jit
def _bwd_kernel(G, U, DH, DG, DU, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    g = tl.load(G + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=ok, other=0.0).to(tl.float32)
    d = tl.load(DH + offs, mask=ok, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    tl.store(DG + offs, (d * u * s * (1.0 + g * (1.0 - s))).to(DG.dtype.element_ty), mask=ok)
    tl.store(DU + offs, (d * g * s).to(DU.dtype.element_ty), mask=ok)


class SwiGLUTriton(torch.autograd.Function):
    """Flat elementwise kernels over contiguous tensors (non-contiguous inputs are copied first)."""

    @staticmethod
    def forward(ctx, gate, up):
        gate, up = gate.contiguous(), up.contiguous()
        h = torch.empty_like(gate)
        n = gate.numel()
        _fwd_kernel[(triton.cdiv(n, BLOCK),)](gate, up, h, n, BLOCK=BLOCK)
        ctx.save_for_backward(gate, up)
        return h

    @staticmethod
    def backward(ctx, dh):
        gate, up = ctx.saved_tensors
        dh = dh.contiguous()
        dgate, dup = torch.empty_like(gate), torch.empty_like(up)
        n = gate.numel()
        _bwd_kernel[(triton.cdiv(n, BLOCK),)](gate, up, dh, dgate, dup, n, BLOCK=BLOCK)
        return dgate, dup


def swiglu(gate: Tensor, up: Tensor, backend: str = "auto") -> Tensor:
    """silu(gate) * up, elementwise; gate and up of the same shape, dtype and device."""
    if gate.shape != up.shape or gate.dtype != up.dtype or gate.device != up.device:
        raise ScratchLMError(
            f"swiglu: gate and up must match, got {tuple(gate.shape)} {gate.dtype} {gate.device}"
            f" and {tuple(up.shape)} {up.dtype} {up.device}"
        )
    name = choose("swiglu", backend, BACKENDS, triton_usable(gate), "reference", gate.is_cuda)
    if name == "naive":
        return swiglu_naive(gate, up)
    return (SwiGLUTriton if name == "triton" else SwiGLUFunction).apply(gate, up)
