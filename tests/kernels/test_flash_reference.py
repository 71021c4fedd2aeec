"""The tiled PyTorch FlashAttention-2 (the kernels' reference and the O(T)-memory CPU path) against full
attention in float64, and what it keeps in memory. Needs no triton."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from scratchlm.kernels.flash_ref import flash_attention_reference, naive_attention

F64 = torch.float64

# (B, H, K, T, S, Dh, causal): lengths that are not multiples of the 16 x 16 tiles, T != S both ways, GQA, MQA.
SHAPES = {
    "causal T=37": (2, 2, 2, 37, 37, 16, True),
    "causal T=50 S=17 (T > S)": (1, 2, 2, 50, 17, 8, True),
    "non-causal T=20 S=45 GQA 4/2": (1, 4, 2, 20, 45, 16, False),
    "causal MQA 3/1 T=33": (2, 3, 1, 33, 33, 12, True),
    "one query, non-causal (decoding)": (1, 2, 1, 1, 5, 16, False),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.to(F64) - b.to(F64)).norm() / b.to(F64).norm()).item()


def _inputs(B, H, K, T, S, Dh, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, Dh, generator=g, dtype=F64)
    k, v = torch.randn(B, K, S, Dh, generator=g, dtype=F64), torch.randn(B, K, S, Dh, generator=g, dtype=F64)
    do = torch.randn(B, H, T, Dh, generator=g, dtype=F64)
    return q.to(dtype), k.to(dtype), v.to(dtype), do


def _run(fn, q, k, v, do):
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    o = out[0] if isinstance(out, tuple) else out
    return (o, *torch.autograd.grad(o, leaves, do.to(o.dtype)))


@pytest.mark.parametrize("name", list(SHAPES))
def test_reference_equals_full_attention_float64(name):
    B, H, K, T, S, Dh, causal = SHAPES[name]
    q, k, v, do = _inputs(B, H, K, T, S, Dh)
    got = _run(lambda *a: flash_attention_reference(*a, causal=causal, block_m=16, block_n=16), q, k, v, do)
    want = _run(lambda *a: naive_attention(*a, causal=causal), q, k, v, do)
    errors = {n: rel(a, b) for n, a, b in zip(("out", "dq", "dk", "dv"), got, want)}
    assert max(errors.values()) < 1e-12, errors


@pytest.mark.parametrize("name", ["causal T=37", "non-causal T=20 S=45 GQA 4/2"])
def test_reference_fp32_within_1e4_of_float64(name):
    B, H, K, T, S, Dh, causal = SHAPES[name]
    q, k, v, do = _inputs(B, H, K, T, S, Dh)
    got = _run(
        lambda *a: flash_attention_reference(*a, causal=causal, block_m=16, block_n=32),
        *(t.float() for t in (q, k, v)),
        do,
    )
    want = _run(lambda *a: naive_attention(*a, causal=causal), q, k, v, do)
    errors = {n: rel(a, b) for n, a, b in zip(("out", "dq", "dk", "dv"), got, want)}
    assert max(errors.values()) <= 1e-4, errors


def test_log_sum_exp_and_naive_against_torch():
    """L is the natural-log log-sum-exp of the scaled, masked scores; naive equals torch SDPA (GQA)."""
    B, H, K, T, S, Dh, causal = SHAPES["causal MQA 3/1 T=33"]
    q, k, v, _ = _inputs(B, H, K, T, S, Dh)
    _, lse = flash_attention_reference(q, k, v, causal=True, block_m=16, block_n=16)
    scores = (q @ k.repeat_interleave(H // K, 1).transpose(-1, -2)) / Dh**0.5
    scores = scores.masked_fill(torch.ones(T, S, dtype=torch.bool).triu(1), float("-inf"))
    assert rel(lse, torch.logsumexp(scores, -1)) < 1e-13
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert rel(naive_attention(q, k, v, causal=True), sdpa) < 1e-13


class _Sizes(TorchDispatchMode):
    """Records the element count of every tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.numels: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numels.append(t.numel())
        return out


def test_reference_never_builds_a_T_by_S_matrix():
    """Forward and backward: no operator output as large as one (B, H, T, S) score matrix, and only
    q, k, v, O and L saved between the passes; the naive path does build it (so the probe works)."""
    B, H, K, T, S, Dh = 1, 2, 1, 96, 96, 16
    q, k, v, do = _inputs(B, H, K, T, S, Dh, dtype=torch.float32)
    scores = B * H * T * S
    with _Sizes() as ref:
        _run(lambda *a: flash_attention_reference(*a, causal=True, block_m=16, block_n=16), q, k, v, do)
    with _Sizes() as naive:
        _run(lambda *a: naive_attention(*a, causal=True), q, k, v, do)
    assert max(naive.numels) >= scores
    assert max(ref.numels) < scores // 4, max(ref.numels)

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        flash_attention_reference(*(t.requires_grad_() for t in (q, k, v)), causal=True)
    assert sorted(saved) == sorted([q.numel(), k.numel(), v.numel(), q.numel(), B * H * T])


def test_causal_skips_masked_tiles():
    """Causal: the key tiles wholly after a query tile are never visited (about half the tile products)."""
    B, H, K, T, S, Dh = 1, 1, 1, 64, 64, 16
    q, k, v, _ = _inputs(B, H, K, T, S, Dh)
    counts = {}
    for causal in (False, True):
        with _Sizes() as sizes:
            flash_attention_reference(q, k, v, causal=causal, block_m=16, block_n=16)
        counts[causal] = sum(n == 16 * 16 for n in sizes.numels)  # ops on one (16, 16) score tile
    assert counts[True] < 0.7 * counts[False], counts
