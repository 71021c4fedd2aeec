"""Positional information: RoPE (inside attention), learned or sinusoidal absolute (added to the
embeddings), or none."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from scratchlm.model.primitives import trunc_normal_


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021): rotate pairs of q/k features by angle pos * theta^(-2i/Dh).

    Pairs are (i, i + Dh/2) ("rotate half", GPT-NeoX / Hugging Face Llama layout), so Llama-family
    checkpoints load without permuting weights. cos/sin tables are fp32 buffers, grown on demand.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10_000.0):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self._build(min(max_len, 4096))  # grown on demand: a 128k-context table per layer would cost GBs

    def _build(self, n: int) -> None:
        angles = torch.outer(torch.arange(n, dtype=torch.float64), self.inv_freq.double())  # (n, Dh/2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def ensure(self, n: int) -> None:
        """Make the table cover positions < n (called by the model with a Python int, so that
        `forward` has no data-dependent branch: no graph break under torch.compile)."""
        if n > self.cos.shape[0]:
            self._build(max(n, 2 * self.cos.shape[0]))

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x: (B, H, T, Dh); pos: (T,) absolute positions, < the size given to `ensure`."""
        cos, sin = self.cos.to(x.device)[pos], self.sin.to(x.device)[pos]  # (T, Dh/2)
        x32 = x.float()
        x1, x2 = x32[..., : self.head_dim // 2], x32[..., self.head_dim // 2 :]
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return out.to(x.dtype)


class LearnedPositions(nn.Module):
    def __init__(self, max_len: int, dim: int, std: float = 0.02):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(max_len, dim), std))

    def ensure(self, n: int) -> None:
        if n > self.weight.shape[0]:
            raise ValueError(f"position {n - 1} is beyond the {self.weight.shape[0]} learned positions")

    def forward(self, pos: Tensor) -> Tensor:  # (T,) -> (T, D)
        return self.weight[pos]


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos features of Vaswani et al. 2017: PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.dim = dim
        self._build(max_len)

    def _build(self, n: int) -> None:
        pos = torch.arange(n, dtype=torch.float64).unsqueeze(1)
        div = torch.exp(torch.arange(0, self.dim, 2, dtype=torch.float64) * (-math.log(10_000.0) / self.dim))
        pe = torch.zeros(n, self.dim, dtype=torch.float64)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : self.dim // 2]
        self.register_buffer("pe", pe.float(), persistent=False)

    def ensure(self, n: int) -> None:
        if n > self.pe.shape[0]:
            self._build(2 * n)

    def forward(self, pos: Tensor) -> Tensor:
        return self.pe.to(pos.device)[pos]


def build_absolute_positions(name: str, max_len: int, dim: int, std: float) -> nn.Module | None:
    """The module added to token embeddings, or None (RoPE acts inside attention; 'none' is NoPE)."""
    if name == "learned":
        return LearnedPositions(max_len, dim, std)
    if name == "sinusoidal":
        return SinusoidalPositions(max_len, dim)
    if name in ("rope", "none"):
        return None
    raise ValueError(f"unknown positions {name!r}: expected rope, learned, sinusoidal or none")
