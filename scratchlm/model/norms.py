"""RMSNorm and LayerNorm, computed in fp32 and cast back to the input dtype.

`RMSNorm` and `LayerNorm` are the readable references (`ops="own"`); `TorchRMSNorm` and
`TorchLayerNorm` compute the same through torch's fused kernels (`ops="torch"`, the default), with the
same parameters, so checkpoints do not care which one wrote them. `FusedRMSNorm` is the Triton kernel
of `scratchlm.kernels` (norm="rmsnorm_fused").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Norm(nn.Module):
    """A gain (and optional bias) per feature: what every norm here owns."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))
        self.bias = nn.Parameter(torch.empty(dim)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Gain 1, bias 0: the identity map on a normalised input."""
        self.weight.fill_(1.0)
        if self.bias is not None:
            self.bias.zero_()


class RMSNorm(Norm):
    """x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019)."""

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight.float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


class LayerNorm(Norm):
    """(x - mean) / sqrt(var + eps) * g + b (Ba et al. 2016); biased variance as torch."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(dim, eps, bias)

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        mean = x32.mean(dim=-1, keepdim=True)
        var = (x32 - mean).pow(2).mean(dim=-1, keepdim=True)
        y = (x32 - mean) * torch.rsqrt(var + self.eps) * self.weight.float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


class TorchRMSNorm(RMSNorm):
    """RMSNorm through `F.rms_norm` (one fused kernel each way), in fp32 as the reference."""

    def forward(self, x: Tensor) -> Tensor:
        y = F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


class TorchLayerNorm(LayerNorm):
    """LayerNorm through `F.layer_norm` (one fused kernel each way), in fp32 as the reference."""

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.weight.shape, self.weight.float(), bias, self.eps).to(x.dtype)


class FusedRMSNorm(RMSNorm):
    """RMSNorm through `scratchlm.kernels.rms_norm`: one Triton kernel each way on CUDA, a PyTorch
    autograd.Function that saves only x and 1/rms elsewhere. Same parameters and results as RMSNorm."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__(dim, eps, bias)
        from scratchlm.kernels.rmsnorm import rms_norm  # imported here: (optional) triton loads only when used

        self.rms_norm = rms_norm

    def forward(self, x: Tensor) -> Tensor:
        return self.rms_norm(x, self.weight, self.bias, self.eps)


# (config name, ops) -> class
NORMS = {
    ("rmsnorm", "own"): RMSNorm,
    ("rmsnorm", "torch"): TorchRMSNorm,
    ("layernorm", "own"): LayerNorm,
    ("layernorm", "torch"): TorchLayerNorm,
    ("rmsnorm_fused", "own"): FusedRMSNorm,
    ("rmsnorm_fused", "torch"): FusedRMSNorm,
}


def build_norm(name: str, dim: int, eps: float, bias: bool, ops: str = "torch") -> nn.Module:
    if (name, ops) not in NORMS:
        names = sorted({n for n, _ in NORMS})
        raise ValueError(f"unknown norm {name!r} (ops={ops!r}): expected one of {', '.join(names)}")
    return NORMS[name, ops](dim, eps=eps, bias=bias)
