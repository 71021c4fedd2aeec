"""Linear layers at decode time on CPU: y = x W^T (+ b) for a handful of rows, split so both cores read weights.

Decoding one token multiplies a few rows by every weight matrix of the model: the work is reading the
weights (memory-bound), not arithmetic. On CPU, torch's `F.linear` with 1-4 rows runs a matrix-vector
kernel on one thread: ~10-12 GB/s here, where two threads stream ~25-30 GB/s. Viewing W (out, in) as
P chunks of rows (P, out/P, in) - a view, no copy - and multiplying them as one batched matmul lets
torch run the P products on all its threads:

    y[:, c*out/P : (c+1)*out/P] = x @ W[c]^T        for c in 0..P-1, as one bmm

Measured on SmolLM2-135M (fp32, 2 cores), the 210 linears of one decode step (425 MB of weights):
F.linear 36 ms, x @ W_c^T 25 ms, W_c @ x^T 16 ms (27 GB/s, about the machine's bandwidth) at one row; at
5-8 rows x @ W_c^T is the faster orientation; beyond 8 rows plain `F.linear` is as fast, so it is used
there and whenever gradients flow (training keeps torch's own kernel and backward).

Backends of `linear`: "auto" (split when it pays: CPU, no grad, rows <= SPLIT_MAX_ROWS, out divisible
into chunks), "split", "torch" (F.linear, the reference; `kernels.use_backend("torch")` forces it).
The split changes the rounding of a row with the number of rows computed together (~1e-6 in fp32), like
any GEMM that picks its kernel by shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from scratchlm.errors import ScratchLMError
from scratchlm.kernels import dispatch

BACKENDS = ("auto", "split", "torch")
SPLIT_MAX_ROWS = 8  # beyond this F.linear's own GEMM is as fast (benchmarks in dev/LOG.md)
WX_MAX_ROWS = 3  # up to here W_c @ x^T, beyond it x @ W_c^T (measured: 1 row 16 vs 25 ms, 5 rows equal)
CHUNKS = 16  # row chunks of W: enough for 2-16 threads to share, few enough that each bmm item is a real GEMV


def num_chunks(out_features: int, chunks: int = CHUNKS) -> int:
    """The largest divisor of `out_features` that is <= chunks (1: no split possible)."""
    return math.gcd(out_features, chunks)


def linear_split(x: Tensor, weight: Tensor, bias: Tensor | None = None, chunks: int = CHUNKS) -> Tensor:
    """x (..., in) @ weight (out, in)^T (+ bias (out,)) as one bmm over `chunks` row blocks of weight."""
    out, d_in = weight.shape
    P = num_chunks(out, chunks)
    rows = x.numel() // d_in
    w = weight.view(P, out // P, d_in)  # (P, out/P, in): a view
    if rows <= WX_MAX_ROWS:
        # W_c @ x^T: each chunk's rows streamed once, a dot product per output (fastest at 1-3 rows)
        xt = x.reshape(rows, d_in).t().unsqueeze(0).expand(P, d_in, rows)  # (P, in, rows): a view
        y = torch.bmm(w, xt).permute(2, 0, 1)  # (rows, P, out/P)
    else:
        x3 = x.reshape(1, rows, d_in).expand(P, rows, d_in)  # (P, rows, in): a view
        y = torch.bmm(x3, w.transpose(1, 2)).transpose(0, 1)  # (rows, P, out/P)
    y = y.reshape(*x.shape[:-1], out)  # (..., out)
    return y if bias is None else y + bias


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, backend: str = "auto") -> Tensor:
    """y = x weight^T (+ bias), x (..., in), weight (out, in)."""
    if backend == "auto" and dispatch._forced and dispatch._forced[-1] in BACKENDS:
        backend = dispatch._forced[-1]  # use_backend("torch") in tests that compare bit for bit
    if backend == "auto":
        use_split = (
            x.device.type == "cpu"
            and x.shape[-1] == weight.shape[1]
            and x.numel() <= SPLIT_MAX_ROWS * x.shape[-1]
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and weight.is_contiguous()
            and num_chunks(weight.shape[0]) > 1
        )
        backend = "split" if use_split else "torch"
    if backend == "torch":
        return F.linear(x, weight, bias)
    if backend != "split":
        raise ScratchLMError(f"unknown linear backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if x.shape[-1] != weight.shape[1] or not weight.is_contiguous():
        raise ScratchLMError(
            f"linear split: x (..., {x.shape[-1]}) and a contiguous weight (out, {weight.shape[1]}) expected"
        )
    return linear_split(x, weight, bias)
