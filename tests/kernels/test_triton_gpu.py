"""The compiled Triton kernels on a CUDA device against float64 references (run with `pytest -m gpu`).

Larger shapes than the interpreter cases: long sequences, every supported head dim, fp32 (IEEE dots)
within 1e-4, bf16 / fp16 within a few units of their rounding."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
]

F64 = torch.float64
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def rel(a, b) -> float:
    return ((a.to(F64) - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "B, H, K, T, Dh, causal",
    [(2, 4, 4, 1000, 64, True), (1, 8, 2, 777, 128, True), (2, 4, 1, 513, 16, False), (1, 2, 2, 2048, 96, True)],
)
def test_flash_attention_cuda(B, H, K, T, Dh, causal, dtype):
    from scratchlm.kernels import attention_with_lse
    from scratchlm.kernels.flash_ref import naive_attention

    torch.manual_seed(0)
    q = torch.randn(B, H, T, Dh, device="cuda", dtype=F64).to(dtype).to(F64)
    k, v = (torch.randn(B, K, T, Dh, device="cuda", dtype=F64).to(dtype).to(F64) for _ in range(2))
    do = torch.randn(B, H, T, Dh, device="cuda", dtype=F64)
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    o, _ = attention_with_lse(*leaves, causal=causal, backend="triton")
    got = (o, *torch.autograd.grad(o, leaves, do.to(dtype)))
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    o_ref = naive_attention(*ref, causal=causal)
    want = (o_ref, *torch.autograd.grad(o_ref, ref, do))
    errors = {n: rel(a, b) for n, a, b in zip(("out", "dq", "dk", "dv"), got, want)}
    assert max(errors.values()) <= TOL[dtype], errors


def test_fused_ops_cuda():
    from scratchlm.kernels import linear_cross_entropy, rms_norm, swiglu

    torch.manual_seed(0)
    x, w = torch.randn(4096, 1000, device="cuda"), torch.randn(1000, device="cuda")
    assert rel(rms_norm(x, w, backend="triton"), rms_norm(x.double(), w.double(), backend="naive")) < 1e-5
    g, u = torch.randn(2, 3000, 700, device="cuda"), torch.randn(2, 3000, 700, device="cuda")
    assert rel(swiglu(g, u, backend="triton"), F.silu(g.double()) * u.double()) < 1e-5
    h, W = torch.randn(3000, 256, device="cuda"), torch.randn(50_000, 256, device="cuda") * 0.05
    t = torch.randint(0, 50_000, (3000,), device="cuda")
    got = linear_cross_entropy(h, W, t, backend="triton")
    assert rel(got, F.cross_entropy(h.double() @ W.double().T, t)) < 1e-4
