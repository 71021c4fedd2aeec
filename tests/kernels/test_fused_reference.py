"""The PyTorch paths of the fused ops (RMSNorm, SwiGLU, chunked linear + cross-entropy) against float64
autograd, their memory claims, and bad input. Needs no triton (the Triton kernels: test_triton_interpreted)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from scratchlm.errors import ScratchLMError
from scratchlm.kernels import linear_cross_entropy, rms_norm, swiglu

F64 = torch.float64


def rel(a, b) -> float:
    return ((a.to(F64) - b.to(F64)).norm() / b.to(F64).norm()).item()


def grads(out, leaves, dout=None):
    return (out, *torch.autograd.grad(out, leaves, dout))


def leaves(*ts, dtype=F64):
    return [t.to(dtype).requires_grad_() for t in ts]


@pytest.mark.parametrize("backend", ["reference", "naive"])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_rms_norm(backend, dtype):
    g = torch.Generator().manual_seed(0)
    x, w, b, dy = (torch.randn(*s, generator=g, dtype=F64) for s in ((3, 5, 40), (40,), (40,), (3, 5, 40)))
    got = grads(rms_norm(*(p := leaves(x, w, b, dtype=dtype)), eps=1e-5, backend=backend), p, dy.to(dtype))
    xr, wr, br = r = leaves(x, w, b)
    want = grads(xr * torch.rsqrt(xr.pow(2).mean(-1, keepdim=True) + 1e-5) * wr + br, r, dy)
    errors = [rel(a, c) for a, c in zip(got, want)]
    assert max(errors) < (1e-12 if dtype == F64 else 1e-5), errors


@pytest.mark.parametrize("backend", ["reference", "naive"])
def test_swiglu(backend):
    g = torch.Generator().manual_seed(1)
    gate, up, dh = (torch.randn(4, 7, 33, generator=g, dtype=F64) for _ in range(3))
    got = grads(swiglu(*(p := leaves(gate, up)), backend=backend), p, dh)
    want = grads(F.silu((r := leaves(gate, up))[0]) * r[1], r, dh)
    assert max(rel(a, c) for a, c in zip(got, want)) < 1e-12


def test_swiglu_reference_saves_only_its_inputs():
    saved = []
    gate, up = leaves(torch.randn(8, 16), torch.randn(8, 16), dtype=torch.float32)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        swiglu(gate, up, backend="reference")
    assert len(saved) == 2 and saved[0] is gate and saved[1] is up


@pytest.mark.parametrize("chunk", [4, 7, 1000])
def test_linear_cross_entropy_reference(chunk):
    g = torch.Generator().manual_seed(2)
    h, W = torch.randn(3, 6, 16, generator=g, dtype=F64), torch.randn(50, 16, generator=g, dtype=F64)
    targets = torch.randint(0, 50, (3, 6), generator=g)
    targets[0, :4] = -100
    got = grads(2.5 * linear_cross_entropy(*(p := leaves(h, W)), targets, chunk=chunk, backend="reference"), p)
    hr, Wr = r = leaves(h, W)
    want = grads(2.5 * F.cross_entropy((hr @ Wr.T).reshape(-1, 50), targets.reshape(-1)), r)
    errors = [rel(a, c) for a, c in zip(got, want)]
    assert max(errors) < 1e-12, errors


class _Sizes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numels: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.numels += [t.numel() for t in (out if isinstance(out, (tuple, list)) else [out]) if torch.is_tensor(t)]
        return out


def test_linear_cross_entropy_never_builds_the_logits():
    """No operator output, forward or backward, as large as the (N, V) logits (chunk = N / 8); the naive
    path builds several (so the probe works)."""
    N, D, V = 64, 8, 512
    h, W = leaves(torch.randn(N, D), torch.randn(V, D) * 0.1, dtype=torch.float32)
    targets = torch.randint(0, V, (N,))
    with _Sizes() as fused:
        linear_cross_entropy(h, W, targets, chunk=8, backend="reference").backward()
    with _Sizes() as naive:
        linear_cross_entropy(h, W, targets, backend="naive").backward()
    assert sum(n >= N * V for n in naive.numels) >= 2
    assert max(fused.numels) <= max(V * D, 8 * V), max(fused.numels)  # dW and one chunk of logits


def test_bad_inputs():
    x = torch.randn(4, 8)
    with pytest.raises(ScratchLMError, match=r"shape \(8,\)"):
        rms_norm(x, torch.ones(7))
    with pytest.raises(ScratchLMError, match="unknown rms_norm backend"):
        rms_norm(x, torch.ones(8), backend="sdpa")
    with pytest.raises(ScratchLMError, match="gate and up must match"):
        swiglu(x, x[:, :4])
    with pytest.raises(ScratchLMError, match="CUDA tensors|not installed"):
        swiglu(x, x, backend="triton")
    with pytest.raises(ScratchLMError, match=r"weight must be \(V, 8\)"):
        linear_cross_entropy(x, torch.randn(5, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ScratchLMError, match="targets must be integer"):
        linear_cross_entropy(x, torch.randn(5, 8), torch.zeros(4))
