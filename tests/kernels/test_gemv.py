"""The decode-time split GEMV against F.linear (its reference), and when "auto" picks it."""

import pytest
import torch
import torch.nn.functional as F

from scratchlm.errors import ScratchLMError
from scratchlm.kernels import gemv


@pytest.mark.parametrize("rows", [1, 3, 4])
@pytest.mark.parametrize("shape", [(48, 32), (192, 576), (37, 20), (64, 7)])
@pytest.mark.parametrize("bias", [False, True])
def test_split_equals_f_linear(rows, shape, bias):
    torch.manual_seed(0)
    out, d_in = shape
    w = torch.randn(out, d_in)
    b = torch.randn(out) if bias else None
    x = torch.randn(rows, d_in)
    ref = F.linear(x, w, b)
    got = gemv.linear(x, w, b, backend="split")
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_split_keeps_leading_dims():
    torch.manual_seed(1)
    w, x = torch.randn(64, 16), torch.randn(2, 1, 16)  # (B, T=1, D): a decode step of 2 rows
    got = gemv.linear(x, w, backend="split")
    assert got.shape == (2, 1, 64)
    torch.testing.assert_close(got, F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_num_chunks_divides_out():
    assert gemv.num_chunks(49152) == 16
    assert gemv.num_chunks(192) == 16
    assert gemv.num_chunks(36) == 4
    assert gemv.num_chunks(37) == 1


def test_auto_uses_split_only_where_it_pays(monkeypatch):
    calls = []
    real = gemv.linear_split
    monkeypatch.setattr(gemv, "linear_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    w = torch.randn(64, 16)
    with torch.no_grad():
        gemv.linear(torch.randn(1, 16), w)  # decode: split
        assert len(calls) == 1
        gemv.linear(torch.randn(9, 16), w)  # many rows: torch's GEMM
        gemv.linear(torch.randn(1, 16), torch.randn(37, 16))  # no divisor of 37 to split by
        gemv.linear(torch.randn(1, 16), torch.randn(16, 64).t())  # not contiguous
    assert len(calls) == 1
    wg = torch.randn(64, 16, requires_grad=True)
    y = gemv.linear(torch.randn(1, 16), wg)  # training: torch's kernel and backward
    assert len(calls) == 1
    y.sum().backward()
    assert wg.grad is not None


def test_errors_name_the_problem():
    with pytest.raises(ScratchLMError, match="unknown linear backend"):
        gemv.linear(torch.randn(1, 4), torch.randn(8, 4), backend="cuda")
    with pytest.raises(ScratchLMError, match="contiguous weight"):
        gemv.linear(torch.randn(1, 4), torch.randn(4, 8).t(), backend="split")


def test_use_backend_forces_torch(monkeypatch):
    from scratchlm.kernels import use_backend

    monkeypatch.setattr(gemv, "linear_split", lambda *a, **k: pytest.fail("split used under use_backend('torch')"))
    with torch.no_grad(), use_backend("torch"):
        gemv.linear(torch.randn(1, 16), torch.randn(64, 16))
