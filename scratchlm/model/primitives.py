"""The primitives, written with torch tensors and autograd only, each tested against its torch twin.

Linear, Embedding, softmax, activations and cross-entropy: the readable reference. The model uses them
with `ops="own"`; with `ops="torch"` (the default) it uses torch's fused twins for the activations,
chosen once at construction (`TORCH_ACTIVATIONS`). The full-score attention lives in
`scratchlm.kernels.flash_ref.naive_attention`, beside the FlashAttention kernels it is the reference of.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.kernels.gemv import linear as kernel_linear


def trunc_normal_(w: Tensor, std: float) -> Tensor:
    """Normal(0, std) truncated at +-3 std (so no weight starts as an outlier)."""
    return nn.init.trunc_normal_(w, mean=0.0, std=std, a=-3 * std, b=3 * std)


class Linear(nn.Linear):
    """y = x W^T (+ b). W: (out, in), truncated-normal init; no bias unless asked.

    A subclass of `nn.Linear` (same `weight`/`bias`/`in_features`/`out_features`) so that torch's
    tensor-parallel styles (`ColwiseParallel`, `RowwiseParallel`), which accept only `nn.Linear`,
    shard it; the forward and the init are the project's own. `residual_out` marks the last
    projection of a residual branch, which `TransformerLM.init_weights` scales down with depth.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = False, std: float = 0.02, residual_out: bool = False):
        nn.Module.__init__(self)  # not nn.Linear.__init__: its kaiming init would be thrown away
        self.in_features, self.out_features = d_in, d_out
        self.std, self.residual_out = std, residual_out
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.register_parameter("bias", nn.Parameter(torch.empty(d_out)) if bias else None)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float | None = None) -> None:
        """weight ~ normal(0, std) truncated at +-3 std (default: the `std` given at construction); bias 0."""
        trunc_normal_(self.weight, self.std if std is None else std)
        if self.bias is not None:
            self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        # F.linear (one addmm with a bias); at decode time on CPU a split GEMV that uses every core
        return kernel_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, bias={self.bias is not None}"


class Embedding(nn.Embedding):
    """Row lookup in a (V, D) table, truncated-normal init. A subclass of `nn.Embedding` (same
    `weight`, no padding row, no max-norm) so torch's tensor-parallel styles accept it."""

    def __init__(self, num: int, dim: int, std: float = 0.02):
        nn.Module.__init__(self)  # not nn.Embedding.__init__: its normal(0, 1) init would be thrown away
        self.num_embeddings, self.embedding_dim, self.std = num, dim, std
        self.padding_idx, self.max_norm, self.norm_type = None, None, 2.0
        self.scale_grad_by_freq, self.sparse = False, False
        self.weight = nn.Parameter(torch.empty(num, dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float | None = None) -> None:
        trunc_normal_(self.weight, self.std if std is None else std)

    def forward(self, ids: Tensor) -> Tensor:
        # index_select rather than weight[ids]: same rows, but its backward is an index_add
        # (~5x faster on CPU than the accumulating index_put of advanced indexing).
        return torch.index_select(self.weight, 0, ids.reshape(-1)).view(*ids.shape, -1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} x {self.embedding_dim}"


class ScaledEmbedding(Embedding):
    """Embedding rows times sqrt(D) (Gemma: Vaswani et al. 2017's sqrt(d_model) on the input side only).

    The factor is a non-persistent buffer, so `model.to(dtype)` rounds it as transformers' Gemma does
    (sqrt(640) = 25.30 is 25.25 in bf16): the same bits as the reference in every dtype."""

    def __init__(self, num: int, dim: int, std: float = 0.02):
        super().__init__(num, dim, std)
        self.register_buffer("scale", torch.full((), math.sqrt(dim)), persistent=False)  # set again by reset

    @torch.no_grad()
    def reset_parameters(self, std: float | None = None) -> None:
        super().reset_parameters(std)
        if hasattr(self, "scale"):  # Embedding.__init__ calls this before the buffer exists
            self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        self.scale.fill_(math.sqrt(self.embedding_dim))

    def forward(self, ids: Tensor) -> Tensor:
        return super().forward(ids) * self.scale.to(self.weight.dtype)  # (..., D)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, times sqrt({self.embedding_dim})"


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


def _torch_gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _torch_relu2(x: Tensor) -> Tensor:
    return torch.square(F.relu(x))


# The same functions through torch's fused kernels (one pass forward and backward instead of a chain of
# elementwise ops and saved tensors); `ops="torch"` picks these.
TORCH_ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": _torch_gelu_tanh,
    "relu2": _torch_relu2,
    "silu": F.silu,
}


def activation(name: str, ops: str = "torch"):
    """The activation function `name` from the project's own primitives (ops="own") or torch's (ops="torch")."""
    table = ACTIVATIONS if ops == "own" else TORCH_ACTIVATIONS
    if name not in table:
        raise ValueError(f"unknown activation {name!r}: expected one of {', '.join(table)}")
    return table[name]


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


def torch_cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """`cross_entropy` through torch's fused log-softmax + NLL (fewer passes over the (N, V) logits, forward
    and backward); the same semantics: fp32 at least, a mean over kept targets that is 0 when none is kept."""
    V = logits.shape[-1]
    x = logits.to(torch.promote_types(logits.dtype, torch.float32)).reshape(-1, V)
    flat = targets.reshape(-1)
    if reduction == "none":
        return F.cross_entropy(x, flat, ignore_index=ignore_index, reduction="none").view(targets.shape)
    total = F.cross_entropy(x, flat, ignore_index=ignore_index, reduction="sum")
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / (flat != ignore_index).sum().clamp_min(1)
    raise ValueError(f"unknown reduction {reduction!r}")


CROSS_ENTROPY = {"own": cross_entropy, "torch": torch_cross_entropy}  # by ModelConfig.ops
