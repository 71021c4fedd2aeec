"""The dispatch point: backends agree, "auto" and the override pick what they say, bad input is a clear error,
and everything but the Triton kernels works without triton."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.kernels import attention, use_backend
from scratchlm.kernels._triton import HAVE_TRITON

REPO = Path(__file__).resolve().parents[2]
# The module (the package re-exports its function under the same name).
attn_mod = importlib.import_module("scratchlm.kernels.attention")


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def qkv(B=2, H=4, K=2, T=19, S=19, Dh=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(B, H, T, Dh, generator=g, dtype=dtype),
        torch.randn(B, K, S, Dh, generator=g, dtype=dtype),
        torch.randn(B, K, S, Dh, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("causal", [True, False])
def test_cpu_backends_agree(causal):
    q, k, v = qkv()
    want = attention(q.double(), k.double(), v.double(), causal=causal, backend="naive")
    for backend in ("auto", "sdpa", "reference", "naive"):
        assert rel(attention(q, k, v, causal=causal, backend=backend), want) < 1e-5, backend


def test_auto_is_sdpa_on_cpu_and_the_override_forces_a_backend(monkeypatch):
    calls = []
    real = attn_mod.flash_attention_reference
    monkeypatch.setattr(attn_mod, "flash_attention_reference", lambda *a: calls.append(1) or real(*a))
    q, k, v = qkv()
    attention(q, k, v, causal=True)
    assert calls == []
    with use_backend("reference"):
        attention(q, k, v, causal=True)
        attention(q, k, v, causal=True, backend="sdpa")  # an explicit backend is not overridden
    assert calls == [1]
    attention(q, k, v, causal=True)
    assert calls == [1]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda q, k, v: (q[0], k, v), "4-d"),
        (lambda q, k, v: (q, k, v[:, :, :-1]), "k and v differ in batch, heads or time"),
        (lambda q, k, v: (q, k[..., :8], v[..., :8]), "batch or head dim"),
        (lambda q, k, v: (q[:, :3], k, v), "multiple of kv heads"),
        (lambda q, k, v: (q.double(), k, v), "dtypes differ"),
        (lambda q, k, v: (q, k.long(), v), "floating-point"),
        (lambda q, k, v: (q[:, :, :0], k, v), "empty"),
    ],
)
def test_bad_inputs_are_clear_errors(make, match):
    with pytest.raises(ScratchLMError, match=match):
        attention(*make(*qkv()), causal=True)


def test_unknown_backend_and_triton_on_cpu_are_clear_errors():
    q, k, v = qkv()
    with pytest.raises(ScratchLMError, match="unknown attention backend 'flash'.*auto, triton, sdpa"):
        attention(q, k, v, backend="flash")
    # In this process triton (if installed) is not interpreted: CPU tensors cannot go to the kernels.
    with pytest.raises(ScratchLMError, match="CUDA tensors|not installed"):
        attention(q, k, v, backend="triton")


def test_unsupported_head_dim_falls_back_or_errors():
    q, k, v = qkv(Dh=160)
    assert rel(attention(q, k, v, causal=True), attention(q, k, v, True, "naive")) < 1e-5  # auto: sdpa
    if HAVE_TRITON and torch.cuda.is_available():
        assert "head dim 160" in attn_mod.triton_unsupported(q.cuda())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_cuda_falls_back_with_one_log_line(caplog):
    q, k, v = (t.cuda() for t in qkv(Dh=160))  # head dim the kernels do not take
    with caplog.at_level(logging.WARNING, logger="scratchlm.kernels"):
        attention(q, k, v, causal=True)
        attention(q, k, v, causal=True)
    assert sum("head dim 160" in r.message for r in caplog.records) == 1


def test_everything_but_triton_works_without_triton():
    """With triton made unimportable: the package imports, auto and reference run, 'triton' says how to install."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from scratchlm.errors import ScratchLMError\n"
        "from scratchlm.kernels import HAVE_TRITON, attention, rms_norm, swiglu\n"
        "assert not HAVE_TRITON\n"
        "q = torch.randn(1, 2, 9, 16)\n"
        "a, b = attention(q, q, q, causal=True), attention(q, q, q, causal=True, backend='reference')\n"
        "assert (a - b).abs().max() < 1e-5\n"
        "rms_norm(q, torch.ones(16)); swiglu(q, q)\n"
        "try:\n"
        "    attention(q, q, q, backend='triton')\n"
        "except ScratchLMError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "triton is not installed" in out.stdout and "scratchlm[triton]" in out.stdout
