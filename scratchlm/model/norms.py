"""RMSNorm and LayerNorm, computed in fp32 and cast back to the input dtype."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight.float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * g + b (Ba et al. 2016); biased variance as torch."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        mean = x32.mean(dim=-1, keepdim=True)
        var = (x32 - mean).pow(2).mean(dim=-1, keepdim=True)
        y = (x32 - mean) * torch.rsqrt(var + self.eps) * self.weight.float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


class FusedRMSNorm(RMSNorm):
    """RMSNorm through `scratchlm.kernels.rms_norm`: one Triton kernel each way on CUDA, a PyTorch
    autograd.Function that saves only x and 1/rms elsewhere. Same parameters and results as RMSNorm."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__(dim, eps, bias)
        from scratchlm.kernels.rmsnorm import rms_norm  # imported here: (optional) triton loads only when used

        self.rms_norm = rms_norm

    def forward(self, x: Tensor) -> Tensor:
        return self.rms_norm(x, self.weight, self.bias, self.eps)


NORMS = {"rmsnorm": RMSNorm, "layernorm": LayerNorm, "rmsnorm_fused": FusedRMSNorm}


def build_norm(name: str, dim: int, eps: float, bias: bool) -> nn.Module:
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}: expected one of {', '.join(NORMS)}")
    return NORMS[name](dim, eps=eps, bias=bias)
