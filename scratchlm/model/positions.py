"""Positional information: RoPE (inside attention), learned or sinusoidal absolute (added to the
embeddings), or none.

RoPE is computed once per forward, on the model, from the explicit per-token positions of the step
(`RotaryEmbedding.tables`), and applied in each attention layer (`apply_rotary`): no per-layer
table, no cap on the position.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from scratchlm.model.primitives import trunc_normal_


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021): rotate pairs of q/k features by angle pos * theta^(-2i/Dh).

    Pairs are (i, i + Dh/2) ("rotate half", GPT-NeoX / Hugging Face Llama layout), so Llama-family
    checkpoints load without permuting weights. The only state is the (Dh/2,) inverse frequencies, a
    non-persistent buffer set by `reset_parameters` (so a model built on the meta device gets it at
    `init_weights`).
    """

    def __init__(self, head_dim: int, theta: float = 10_000.0):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, device=None) -> None:
        device = device or self.inv_freq.device
        inv = 1.0 / self.theta ** (
            torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=device) / self.head_dim
        )
        self.inv_freq = inv.float()

    def tables(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions (..., T) long (>= 0) -> cos, sin (..., T, Dh) fp32, laid out for `apply_rotary`:
        cos = [cos(a) ; cos(a)] and sin = [-sin(a) ; sin(a)] over the two halves (a = the (..., T, Dh/2)
        angles), so the sign of "rotate half" is folded into the table, computed once per forward for
        every layer. The angles are formed in fp64 (an fp32 product loses the low bits of large
        positions) and rounded once."""
        angles = positions.to(torch.float64)[..., None] * self.inv_freq.to(positions.device, torch.float64)
        cos, sin = angles.cos().float(), angles.sin().float()
        return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, T, Dh) rotated by the tables cos, sin (B|1, T, Dh) of `RotaryEmbedding.tables`, in fp32:
    [x1 ; x2] -> [x1 cos - x2 sin ; x2 cos + x1 sin] = x * cos + [x2 ; x1] * [-sin ; sin]."""
    half = x.shape[-1] // 2
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B|1, 1, T, Dh): broadcast over heads
    x32 = x.float()
    swapped = torch.cat([x32[..., half:], x32[..., :half]], dim=-1)  # [x2 ; x1]
    return (x32 * cos + swapped * sin).to(x.dtype)


class LearnedPositions(nn.Module):
    def __init__(self, max_len: int, dim: int, std: float = 0.02):
        super().__init__()
        self.std = std
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        trunc_normal_(self.weight, self.std)

    def check(self, n: int) -> None:
        """Refuse positions >= n beyond the table (a Python int check: no graph break under compile)."""
        if n > self.weight.shape[0]:
            raise ValueError(f"position {n - 1} is beyond the {self.weight.shape[0]} learned positions")

    def forward(self, pos: Tensor) -> Tensor:  # (B|1, T) -> (B|1, T, D)
        # index_select, as `Embedding`: its backward is an index_add, not advanced indexing's index_put
        return torch.index_select(self.weight, 0, pos.reshape(-1)).view(*pos.shape, -1)


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos features of Vaswani et al. 2017: PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos,
    computed from the positions of each step (no table)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("div", torch.empty((dim + 1) // 2), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, device=None) -> None:
        device = device or self.div.device
        self.div = torch.exp(
            torch.arange(0, self.dim, 2, dtype=torch.float64, device=device) * (-math.log(10_000.0) / self.dim)
        )

    def check(self, n: int) -> None:
        pass  # any position has its features

    def forward(self, pos: Tensor) -> Tensor:  # (B|1, T) -> (B|1, T, D) fp32
        angles = pos.to(torch.float64)[..., None] * self.div.to(pos.device)  # (B|1, T, ceil(D/2))
        pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[..., : self.dim]  # interleaved sin, cos
        return pe.float()


def build_absolute_positions(name: str, max_len: int, dim: int, std: float) -> nn.Module | None:
    """The module added to token embeddings, or None (RoPE acts inside attention; 'none' is NoPE)."""
    if name == "learned":
        return LearnedPositions(max_len, dim, std)
    if name == "sinusoidal":
        return SinusoidalPositions(dim)
    if name in ("rope", "none"):
        return None
    raise ValueError(f"unknown positions {name!r}: expected rope, learned, sinusoidal or none")
