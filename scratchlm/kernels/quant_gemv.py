"""Weight-only int8 / int4 linears for a few rows on CPU, reading the quantised bytes (`_quant_gemv.c`).

    y = quant_linear_cpu(x, 8, qweight, scale, None, 0, bias)            # Int8Linear's weights
    y = quant_linear_cpu(x, 4, qweight, scale, zero, group_size, bias)   # Int4Linear's weights
    why = cpu_unsupported(x, qweight)                                    # '' when the kernel takes them
    gemv = BoundGemv(8, qweight, scale, None, 0, bias); y = gemv(x)     # checked once (the modules' path)

Decoding is bound by reading the weights. The reference path of compress/quant.py dequantises the whole
matrix to float and calls `F.linear` (it reads the quantised bytes, writes and reads the float matrix:
slower than fp32). The compiled kernel reads 1 byte (int8) or ~0.56 byte (int4 with its scales and zero
points) per weight instead of fp32's 4, unpacks and converts in registers, and applies each scale / zero
once per group. Rows of activations: 1..MAX_ROWS (decode steps, batches of decodes, short prefills: the C
code takes 8 rows a pass over blocks of weights that stay in cache); more rows go to the reference (a GEMM
there re-reads the dequantised matrix from cache, so the dequantise is amortised).

Threads: one by default. The kernel's own thread pool competes with torch's OpenMP workers, which spin
between ops: on 2 cores, SmolLM2 int8 decoded at ~30 tokens/s with a pool of 2 next to torch's 2 threads
and ~48 with the kernel on one (dev/LOG.md, session 9; benchmarks/quant_decode_ab.py measures the default).
`set_threads(n)` (or env SCRATCHLM_QUANT_THREADS) uses a pool of n, which pays when torch runs one thread
(`torch.set_num_threads(1)`).

The loops are AVX-512F, AVX2 + FMA or portable C, the best the CPU runs, picked at import (no -march
flag at build: the wheel runs on any x86-64); `_quant_gemv.isa()` names them, `_quant_gemv.set_isa(name)`
or env SCRATCHLM_QUANT_ISA picks a lower one. The kernel is built by setup.py where a C compiler exists;
without it `cpu_unsupported` says so and the modules use the reference. Results match the reference up
to fp32 rounding (a different summation order). torch's `_weight_int8pack_mm` measured 20-100x slower
than this kernel at one row here (torch 2.13 CPU), so it is not used.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from scratchlm.errors import ScratchLMError

try:  # built by setup.py where a C compiler exists (optional, like the paged decode kernel)
    from scratchlm.kernels import _quant_gemv
except ImportError:  # pragma: no cover - depends on the install
    _quant_gemv = None

# rows per call. Kernel (one thread) against dequantise + F.linear (2 torch threads) on SmolLM2's shapes
# (benchmarks/quant_gemv_rows.py; the reference's dequantise varies ~3x between runs): at 48 rows int8 1.5-2.4x
# faster, int4 0.8-2.5x; at 64 rows the GEMM wins for int4 (0.6x, dev/LOG.md session 9)
MAX_ROWS = 48
MIN_THREAD_WEIGHTS = 1 << 16  # below ~64k weights one thread finishes before a second one wakes
_threads = None  # set_threads; None: env SCRATCHLM_QUANT_THREADS, else 1


def set_threads(n: int | None) -> int | None:
    """Use a pool of n threads in the kernel (None: back to the default); returns the previous setting."""
    global _threads
    if n is not None and not 1 <= int(n) <= 64:
        raise ScratchLMError(f"quant gemv threads must be in 1..64, got {n}")
    before, _threads = _threads, None if n is None else int(n)
    return before


def kernel_threads() -> int:
    """The kernel's thread count: set_threads, else env SCRATCHLM_QUANT_THREADS, else 1."""
    return _threads if _threads is not None else _env_threads()


@functools.cache
def _env_threads() -> int:
    env = os.environ.get("SCRATCHLM_QUANT_THREADS", "")
    if not env:
        return 1
    if not env.isdigit() or not 1 <= int(env) <= 64:
        raise ScratchLMError(f"SCRATCHLM_QUANT_THREADS must be an integer in 1..64, got {env!r}")
    return int(env)


def cpu_unsupported(x: Tensor, qweight: Tensor) -> str:
    """'' if the compiled kernel takes activations `x` (..., K) against `qweight`, else why not."""
    if _quant_gemv is None:
        return "the compiled kernel scratchlm.kernels._quant_gemv is not built (no C compiler at install)"
    if x.device.type != "cpu" or qweight.device.type != "cpu":
        return f"tensors on {x.device} / {qweight.device}"
    if x.dtype != torch.float32:
        return f"activations of dtype {x.dtype} (the compiled kernel takes float32)"
    rows = x.numel() // max(x.shape[-1], 1)
    if not 1 <= rows <= MAX_ROWS:
        return f"{rows} rows of activations (the compiled kernel takes 1..{MAX_ROWS})"
    if torch.is_grad_enabled() and x.requires_grad:
        return "gradients flow through the activations (the compiled kernel has no backward)"
    return ""


def _check_weights(bits: int, qweight: Tensor, scale: Tensor, zero, group_size: int, bias, k: int) -> None:
    n = qweight.shape[0]
    if bits == 8:
        ok = qweight.dtype == torch.int8 and qweight.shape == (n, k) and scale.shape == (n,)
    elif bits == 4:
        ok = (
            group_size >= 2
            and group_size % 2 == 0
            and k % group_size == 0
            and qweight.dtype == torch.uint8
            and qweight.shape == (n, k // 2)
            and zero is not None
            and scale.shape == zero.shape == (n, k // group_size)
            and zero.dtype == torch.uint8
        )
    else:
        ok = False
    if not ok or (bias is not None and bias.shape != (n,)):
        raise ScratchLMError(
            f"quant_linear_cpu: bits={bits} group={group_size} weights {tuple(qweight.shape)} {qweight.dtype}, "
            f"scale {tuple(scale.shape)}, bias {None if bias is None else tuple(bias.shape)} do not fit inputs "
            f"of width {k}"
        )


class BoundGemv:
    """The compiled kernel bound to one set of quantised weights, checked once: a call checks only `x`.

    A decode step calls ~200 linears, so the per-call Python work matters as much as the kernel (the
    checks and conversions of `quant_linear_cpu` cost ~15 us a call). The weights must already be in the
    kernel's layout (contiguous, fp32 scale and bias, CPU); `bound_to` says whether a module's tensors are
    still the ones bound (same objects, same storage), else the module binds again."""

    __slots__ = ("bits", "n", "k", "group_size", "tensors", "ptrs")

    def __init__(self, bits: int, qweight: Tensor, scale: Tensor, zero, group_size: int, bias=None):
        if _quant_gemv is None:
            raise ScratchLMError(f"quant_linear_cpu: {cpu_unsupported(torch.empty(1, 1), qweight)}")
        k = qweight.shape[1] * (1 if bits == 8 else 2)
        _check_weights(bits, qweight, scale, zero, group_size, bias, k)
        tensors = (qweight, scale, zero, bias)
        for t in tensors:
            if t is not None and (t.device.type != "cpu" or not t.is_contiguous()):
                raise ScratchLMError("quant_linear_cpu: the weights are not contiguous CPU tensors")
        if scale.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32):
            raise ScratchLMError("quant_linear_cpu: scale and bias must be float32")
        self.bits, self.n, self.k, self.group_size = bits, qweight.shape[0], k, group_size if bits == 4 else 0
        self.tensors = tensors
        self.ptrs = tuple(t.data_ptr() if t is not None else 0 for t in tensors)

    def bound_to(self, qweight: Tensor, scale: Tensor, zero, bias) -> bool:
        q, s, z, b = self.tensors
        if q is not qweight or s is not scale or z is not zero or b is not bias:
            return False
        # `param.data = ...` (e.g. module.half()) keeps the object but swaps the storage
        return (
            q.data_ptr() == self.ptrs[0]
            and s.data_ptr() == self.ptrs[1]
            and (z is None or z.data_ptr() == self.ptrs[2])
            and (b is None or b.data_ptr() == self.ptrs[3])
        )

    def __call__(self, x: Tensor, threads: int | None = None) -> Tensor | None:
        """x (..., K) @ W^T (+ bias) -> (..., N), or None where the kernel does not take `x`."""
        k = self.k
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[-1] != k:
            return None
        rows = x.numel() // k
        if not 1 <= rows <= MAX_ROWS or (x.requires_grad and torch.is_grad_enabled()):
            return None
        if not x.is_contiguous():
            x = x.contiguous()  # the kernel reads rows of K consecutive floats
        n = self.n
        y = torch.empty((*x.shape[:-1], n), dtype=torch.float32)  # (..., N)
        if threads is None:
            threads = kernel_threads() if n * k >= MIN_THREAD_WEIGHTS else 1
        q, s, z, b = self.ptrs
        _quant_gemv.gemv(self.bits, x.data_ptr(), q, s, z, b, y.data_ptr(), rows, n, k, self.group_size, threads)
        return y


def quant_linear_cpu(
    x: Tensor,
    bits: int,
    qweight: Tensor,
    scale: Tensor,
    zero: Tensor | None,
    group_size: int,
    bias: Tensor | None = None,
    threads: int | None = None,
) -> Tensor:
    """x (..., K) fp32 @ W^T (+ bias) -> (..., N), W given in quant.py's int8 (bits 8) or int4 (bits 4) form."""
    why = cpu_unsupported(x, qweight)
    if why:
        raise ScratchLMError(f"quant_linear_cpu: {why}")
    _check_weights(bits, qweight, scale, zero, group_size, bias, x.shape[-1])
    gemv = BoundGemv(
        bits,
        qweight.contiguous(),
        scale.to(torch.float32).contiguous(),
        zero.contiguous() if bits == 4 else None,
        group_size,
        bias.detach().to(torch.float32).contiguous() if bias is not None else None,
    )
    return gemv(x, threads)
