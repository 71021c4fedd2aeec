"""Feed-forward blocks: dense (ReLU / GELU / squared ReLU) and gated (SwiGLU / GeGLU)."""

from __future__ import annotations

from torch import Tensor, nn

from scratchlm.model.config import ModelConfig
from scratchlm.model.primitives import ACTIVATIONS, Linear


class DenseMLP(nn.Module):
    """down(act(up(x))): (B, T, D) -> (B, T, F) -> (B, T, D)."""

    def __init__(self, d_model: int, d_ff: int, activation: str, bias: bool = False):
        super().__init__()
        self.up = Linear(d_model, d_ff, bias)
        self.down = Linear(d_ff, d_model, bias, residual_out=True)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) (Shazeer 2020, 'GLU Variants Improve Transformer')."""

    def __init__(self, d_model: int, d_ff: int, activation: str, bias: bool = False):
        super().__init__()
        self.gate = Linear(d_model, d_ff, bias)
        self.up = Linear(d_model, d_ff, bias)
        self.down = Linear(d_ff, d_model, bias, residual_out=True)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


# config name -> (class, activation)
MLPS = {
    "relu": (DenseMLP, "relu"),
    "gelu": (DenseMLP, "gelu"),
    "gelu_tanh": (DenseMLP, "gelu_tanh"),
    "relu2": (DenseMLP, "relu2"),
    "swiglu": (GatedMLP, "silu"),
    "geglu": (GatedMLP, "gelu"),
}


def build_ffn(name: str, d_model: int, d_ff: int, bias: bool) -> nn.Module:
    if name not in MLPS:
        raise ValueError(f"unknown mlp {name!r}: expected one of {', '.join(MLPS)}")
    cls, act = MLPS[name]
    return cls(d_model, d_ff, act, bias)


def build_mlp(cfg: ModelConfig) -> nn.Module:
    """The feed-forward of one block: dense/gated, or a Mixture of Experts when moe.num_experts > 0."""
    if cfg.moe.num_experts > 0:
        from scratchlm.model.moe import MoE

        return MoE(cfg)
    return build_ffn(cfg.mlp, cfg.d_model, cfg.ff_dim, cfg.bias)
