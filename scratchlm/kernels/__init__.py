"""Kernels: Triton fast paths, each with a PyTorch reference it is tested against, and one dispatch
function per op that picks the backend ("auto": Triton on CUDA when it can run, else PyTorch).

    from scratchlm.kernels import attention, rms_norm, swiglu, linear_cross_entropy, use_backend
    y = attention(q, k, v, causal=True)              # FlashAttention-2 (Triton) / SDPA / tiled reference / naive
    with use_backend("reference"):                   # force what "auto" picks (tests, benchmarks)
        y = attention(q, k, v, causal=True)

Triton is optional (`pip install 'scratchlm[triton]'`); without it every op runs its PyTorch path.
"""

from scratchlm.kernels._triton import HAVE_TRITON, INTERPRET
from scratchlm.kernels.attention import attention, attention_with_lse
from scratchlm.kernels.dispatch import use_backend
from scratchlm.kernels.linear_cross_entropy import linear_cross_entropy
from scratchlm.kernels.rmsnorm import rms_norm
from scratchlm.kernels.swiglu import swiglu

__all__ = [
    "HAVE_TRITON",
    "INTERPRET",
    "attention",
    "attention_with_lse",
    "linear_cross_entropy",
    "rms_norm",
    "swiglu",
    "use_backend",
]
