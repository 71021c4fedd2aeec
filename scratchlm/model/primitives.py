"""The primitives, written with torch tensors and autograd only, each tested against its torch twin.

Linear, Embedding, softmax, activations, scaled dot-product attention and cross-entropy. The model
uses these; `attention.py` can switch its inner product to torch's fused SDPA (`attn_backend`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def trunc_normal_(w: Tensor, std: float) -> Tensor:
    """Normal(0, std) truncated at +-3 std (so no weight starts as an outlier)."""
    return nn.init.trunc_normal_(w, mean=0.0, std=std, a=-3 * std, b=3 * std)


class Linear(nn.Module):
    """y = x W^T (+ b). W: (out, in), truncated-normal init; no bias unless asked.

    `residual_out` marks the last projection of a residual branch, which `init_weights` scales
    down with depth.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = False, std: float = 0.02, residual_out: bool = False):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(d_out, d_in), std))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None
        self.residual_out = residual_out

    def forward(self, x: Tensor) -> Tensor:
        # F.linear is the matmul (+ bias) itself, fused into one addmm when there is a bias.
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}, bias={self.bias is not None}"


class Embedding(nn.Module):
    """Row lookup in a (V, D) table, truncated-normal init."""

    def __init__(self, num: int, dim: int, std: float = 0.02):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(num, dim), std))

    def forward(self, ids: Tensor) -> Tensor:
        # index_select rather than weight[ids]: same rows, but its backward is an index_add
        # (~5x faster on CPU than the accumulating index_put of advanced indexing).
        return torch.index_select(self.weight, 0, ids.reshape(-1)).view(*ids.shape, -1)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """exp(x - max) / sum: the max shift keeps exp from overflowing. A row that is entirely -inf
    (fully masked) gives zeros rather than NaN."""
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(x - m)
    s = e.sum(dim=dim, keepdim=True)
    return e / torch.where(s > 0, s, torch.ones_like(s))


def silu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x: Tensor) -> Tensor:
    """GPT-2's tanh approximation of GELU (Hendrycks & Gimpel 2016)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def relu(x: Tensor) -> Tensor:
    return torch.clamp_min(x, 0.0)


def relu2(x: Tensor) -> Tensor:
    """Squared ReLU (So et al. 2021, Primer)."""
    return torch.square(torch.clamp_min(x, 0.0))


ACTIVATIONS = {"relu": relu, "gelu": gelu, "gelu_tanh": gelu_tanh, "relu2": relu2, "silu": silu}


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """softmax(q k^T * scale + mask) v over the last two dims.

    q: (..., T, Dh), k: (..., S, Dh), v: (..., S, Dv). `mask`: bool, True = may attend (broadcast
    to (..., T, S)), as in torch. `is_causal`: query i sees keys j <= i (torch's top-left
    alignment; with a KV cache pass an explicit mask). A query that may attend to nothing gets a
    zero output (torch gives NaN there).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., T, S)
    T, S = scores.shape[-2:]
    if is_causal:
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        mask = causal if mask is None else mask & causal
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v


class _CrossEntropy(torch.autograd.Function):
    """Per-row -log softmax(x)[t] with the textbook gradient softmax(x) - onehot(t), written out:
    the backward is one exp pass over the logits instead of autograd's chain of saved tensors."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, keep: Tensor) -> Tensor:  # (N, V), (N,), (N,)
        lse = torch.logsumexp(logits, dim=-1)  # (N,): shifts by the row max, so any logit size is safe
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(logits, lse, targets, keep)
        return torch.where(keep, lse - picked, 0.0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, lse, targets, keep = ctx.saved_tensors
        g = torch.exp(logits - lse.unsqueeze(-1))  # softmax, (N, V)
        g[torch.arange(len(targets), device=g.device), targets] -= 1.0
        g *= torch.where(keep, grad, 0.0).unsqueeze(-1)
        return g, None, None


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """-log softmax(logits)[target] = logsumexp(logits) - logits[target], in fp32 (or fp64).

    logits: (..., V), targets: (...). Targets equal to `ignore_index` contribute 0 and are left out
    of the mean. Gradient: (softmax(logits) - onehot(target)) per row (`_CrossEntropy`).
    """
    V = logits.shape[-1]
    flat_targets = targets.reshape(-1)
    keep = flat_targets != ignore_index
    x = logits.to(torch.promote_types(logits.dtype, torch.float32)).reshape(-1, V)  # fp32 at least
    loss = _CrossEntropy.apply(x, torch.where(keep, flat_targets, 0), keep)
    loss = loss.view(targets.shape)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / keep.sum().clamp_min(1)
    raise ValueError(f"unknown reduction {reduction!r}")
