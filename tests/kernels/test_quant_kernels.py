"""The quantised linears' fast paths against the dequantise-then-F.linear reference (compress/quant.py).

CPU: the compiled GEMV (`kernels/_quant_gemv.c`) over int8 per channel and int4 group-wise weights, 1..8
rows, odd shapes, group sizes 32/64/128 (and halves that are not a multiple of the 16 vector lanes),
bias, non-contiguous inputs, one and several threads, the AVX-512 and the portable loops; the modules'
dispatch, and their fallback when the extension is not built. GPU: the Triton kernel under the Triton
interpreter (a subprocess: TRITON_INTERPRET must be set before triton is imported) and on CUDA (`gpu`).
Errors are reported as max abs / relative (to max |ref|) error.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scratchlm.compress.quant import Int4Linear, Int8Linear
from scratchlm.errors import ScratchLMError
from scratchlm.kernels import quant_gemv, use_backend
from scratchlm.kernels.quant_gemv import cpu_unsupported, quant_linear_cpu

REPO = Path(__file__).resolve().parents[2]
needs_ext = pytest.mark.skipif(quant_gemv._quant_gemv is None, reason="scratchlm.kernels._quant_gemv is not built")
TOL = 2e-5  # fp32, a different summation order than the reference GEMM


def _errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    err = (out - ref).abs().max().item()
    return err, err / max(ref.abs().max().item(), 1e-12)


def _module(bits: int, n: int, k: int, group: int, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    return Int8Linear.from_weight(w, b) if bits == 8 else Int4Linear.from_weight(w, group, b)


def _reference(m, x):
    return F.linear(x, m.dequantize(torch.float32), m.bias)


def _fast(m, x, threads=None):
    if isinstance(m, Int8Linear):
        return quant_linear_cpu(x, 8, m.qweight, m.scale, None, 0, m.bias, threads=threads)
    return quant_linear_cpu(x, 4, m.qweight, m.scale, m.zero, m.group_size, m.bias, threads=threads)


FORMATS = [(8, 0), (4, 32), (4, 64), (4, 128), (4, 6), (4, 48)]  # g=6, 48: half-groups off the 16 lanes


@needs_ext
@pytest.mark.parametrize("bits,group", FORMATS, ids=lambda v: str(v))
@pytest.mark.parametrize("bias", [False, True])
def test_cpu_kernel_matches_reference(bits, group, bias):
    k = 384 if group in (0, 6, 32, 48, 64, 128) else group * 3  # 384 = 3 x 128: every group size divides it
    n = 45  # odd: the last thread's range is short
    torch.manual_seed(1)
    m = _module(bits, n, k, group, bias)
    for rows in range(1, 9):
        x = torch.randn(rows, k)
        err, rel = _errors(_fast(m, x), _reference(m, x))
        assert rel < TOL, f"bits={bits} g={group} rows={rows}: max abs {err:.2e}, rel {rel:.2e}"


@needs_ext
@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32)])
def test_cpu_kernel_threads_odd_k_and_noncontiguous(bits, group):
    k = 1000 if bits == 8 else 992  # int8: K off the 16 lanes (a scalar tail); int4: 31 groups of 32
    m = _module(bits, 333, k, group, bias=True, seed=3)
    wide = torch.randn(2, 5, 2 * k)
    x = wide[..., ::2]  # (2, 5, k) non-contiguous, 10 rows -> take 2 x 3 = 6 rows of it below
    x = x[:, :3]
    assert not x.is_contiguous()
    ref = _reference(m, x)
    for threads in (1, 2, 3):
        out = _fast(m, x, threads=threads)
        assert out.shape == (2, 3, 333)
        err, rel = _errors(out, ref)
        assert rel < TOL, f"threads={threads}: max abs {err:.2e}, rel {rel:.2e}"


@needs_ext
def test_portable_loops_match_reference():
    """The loops used on CPUs without AVX-512 (forced in a subprocess by SCRATCHLM_NO_AVX512)."""
    code = (
        "import torch, torch.nn.functional as F\n"
        "from scratchlm.compress.quant import Int4Linear, Int8Linear\n"
        "from scratchlm.kernels import _quant_gemv\n"
        "from scratchlm.kernels.quant_gemv import quant_linear_cpu\n"
        "assert _quant_gemv.isa() == 'generic', _quant_gemv.isa()\n"
        "torch.manual_seed(0); w = torch.randn(70, 480); b = torch.randn(70); worst = 0.0\n"
        "for m in (Int8Linear.from_weight(w, b), Int4Linear.from_weight(w, 32, b), Int4Linear.from_weight(w, 96)):\n"
        "    for rows in (1, 5, 8, 13):\n"
        "        x = torch.randn(rows, 480); ref = F.linear(x, m.dequantize(), m.bias)\n"
        "        bits = 8 if isinstance(m, Int8Linear) else 4\n"
        "        out = quant_linear_cpu(x, bits, m.qweight, m.scale, getattr(m, 'zero', None),\n"
        "                               getattr(m, 'group_size', 0), m.bias)\n"
        "        worst = max(worst, ((out - ref).abs().max() / ref.abs().max()).item())\n"
        "print(worst)\n"
    )
    env = {**os.environ, "SCRATCHLM_NO_AVX512": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip()) < TOL


@needs_ext
@pytest.mark.parametrize("cls", ["int8", "int4"])
def test_modules_dispatch_to_the_kernel_and_back(cls):
    m = _module(8 if cls == "int8" else 4, 64, 256, 64, bias=True, seed=5)
    x = torch.randn(3, 256)
    with torch.no_grad():
        fast = m(x)
        with use_backend("torch"):
            ref = m(x)
    assert torch.equal(fast, _fast(m, x))  # the module used the compiled kernel
    err, rel = _errors(fast, ref)
    assert rel < TOL, f"max abs {err:.2e}, rel {rel:.2e}"
    big = torch.randn(quant_gemv.MAX_ROWS + 1, 256)  # more rows than the kernel takes: the reference, bit for bit
    with torch.no_grad():
        assert torch.equal(m(big), _reference(m, big))
    assert "rows" in cpu_unsupported(big, m.qweight)
    xb = x.to(torch.bfloat16)  # other dtypes: the reference in that dtype
    assert "dtype" in cpu_unsupported(xb, m.qweight)
    plain = _module(8 if cls == "int8" else 4, 64, 256, 64, bias=False, seed=5)
    with torch.no_grad():
        assert m(xb.float()).dtype == torch.float32 and plain(xb).dtype == torch.bfloat16


@needs_ext
def test_gradients_flow_through_the_reference():
    m = _module(4, 32, 64, 32, bias=True)
    x = torch.randn(2, 64, requires_grad=True)
    assert "gradients" in cpu_unsupported(x, m.qweight)
    m(x).sum().backward()
    assert x.grad is not None and m.bias.grad is not None


def test_fallback_without_the_extension(monkeypatch):
    m = _module(4, 40, 128, 32, bias=True)
    x = torch.randn(2, 128)
    monkeypatch.setattr(quant_gemv, "_quant_gemv", None)
    why = cpu_unsupported(x, m.qweight)
    assert "not built" in why
    with pytest.raises(ScratchLMError, match="not built"):
        quant_linear_cpu(x, 4, m.qweight, m.scale, m.zero, 32)
    with torch.no_grad():
        assert torch.equal(m(x), _reference(m, x))  # the module falls back to the reference


@needs_ext
def test_bad_arguments_are_refused():
    m = _module(4, 16, 64, 32, bias=False)
    x = torch.randn(1, 64)
    with pytest.raises(ScratchLMError, match="do not fit"):
        quant_linear_cpu(x, 4, m.qweight, m.scale, m.zero, 16)  # wrong group size for these scales
    with pytest.raises(ScratchLMError, match="do not fit"):
        quant_linear_cpu(torch.randn(1, 32), 4, m.qweight, m.scale, m.zero, 32)  # wrong width
    with pytest.raises(ScratchLMError, match="do not fit"):
        quant_linear_cpu(x, 3, m.qweight, m.scale, m.zero, 32)
    with pytest.raises(ScratchLMError, match="rows"):
        quant_linear_cpu(torch.randn(quant_gemv.MAX_ROWS + 1, 64), 4, m.qweight, m.scale, m.zero, 32)
    with pytest.raises(ScratchLMError, match="SCRATCHLM_QUANT_THREADS|1..64"):
        quant_gemv.set_threads(0)


# ---------------------------------------------------------------------------------------------- Triton
TRITON_CASES = r"""
import json, torch, torch.nn.functional as F
from scratchlm.compress.quant import Int4Linear, Int8Linear
from scratchlm.kernels.quant_matmul_triton import quant_matmul
torch.manual_seed(0)
out = {}
for bits, g, n, k, rows, bias in [(8, 0, 40, 100, 3, True), (8, 0, 70, 128, 17, False), (4, 32, 40, 128, 3, True),
                                  (4, 64, 70, 192, 1, False), (4, 128, 33, 256, 20, True)]:
    w, b = torch.randn(n, k), (torch.randn(n) if bias else None)
    m = Int8Linear.from_weight(w, b) if bits == 8 else Int4Linear.from_weight(w, g, b)
    x = torch.randn(rows, 2 * k)[:, ::2]  # non-contiguous rows
    ref = F.linear(x, m.dequantize(), m.bias)
    y = quant_matmul(x, bits, m.qweight, m.scale, getattr(m, "zero", None), g, m.bias)
    err = (y - ref).abs().max().item()
    out[f"int{bits}-g{g}-{n}x{k}-rows{rows}"] = [err, err / ref.abs().max().item()]
print(json.dumps(out))
"""


def test_triton_kernel_interpreted():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (optional extra: pip install 'scratchlm[triton]')")
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run([sys.executable, "-c", TRITON_CASES], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = {k: v for k, v in results.items() if not v[1] < 1e-5}
    assert not bad, f"max abs / rel errors above 1e-5: {bad} (all: {results})"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32), (4, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernel_cuda(bits, group, dtype):
    pytest.importorskip("triton")
    torch.manual_seed(0)
    m = _module(bits, 1536, 576 if group != 128 else 640, group, bias=True).cuda()
    for rows in (1, 7, 64):
        x = torch.randn(rows, m.in_features, device="cuda", dtype=dtype)
        with torch.no_grad():
            out = m(x)  # dispatches to the Triton kernel on CUDA
            ref = F.linear(x.float(), m.dequantize(torch.float32), m.bias)
        assert out.dtype == dtype
        err, rel = _errors(out.float(), ref)
        tol = 2e-2 if dtype == torch.bfloat16 else 5e-3  # tf32 dots on GPU, bf16 output rounding
        assert rel < tol, f"rows={rows}: max abs {err:.2e}, rel {rel:.2e}"


@needs_ext
def test_thread_setting(monkeypatch):
    """One kernel thread unless asked (torch's OpenMP workers spin between ops); set_threads / env override."""
    monkeypatch.delenv("SCRATCHLM_QUANT_THREADS", raising=False)
    quant_gemv._env_threads.cache_clear()
    assert quant_gemv.kernel_threads() == 1
    before = quant_gemv.set_threads(2)
    try:
        assert quant_gemv.kernel_threads() == 2
        m = _module(8, 300, 256, 0, bias=True, seed=7)  # 77k weights: over MIN_THREAD_WEIGHTS, the pool runs
        x = torch.randn(3, 256)
        assert _errors(_fast(m, x), _reference(m, x))[1] < TOL
    finally:
        quant_gemv.set_threads(before)
    monkeypatch.setenv("SCRATCHLM_QUANT_THREADS", "3")
    quant_gemv._env_threads.cache_clear()
    assert quant_gemv.kernel_threads() == 3
    monkeypatch.setenv("SCRATCHLM_QUANT_THREADS", "many")
    quant_gemv._env_threads.cache_clear()
    with pytest.raises(ScratchLMError, match="SCRATCHLM_QUANT_THREADS"):
        quant_gemv.kernel_threads()
    monkeypatch.delenv("SCRATCHLM_QUANT_THREADS")
    quant_gemv._env_threads.cache_clear()
