"""Feed-forward blocks: dense (ReLU / GELU / squared ReLU) and gated (SwiGLU / GeGLU, with exact or tanh GELU)."""

from __future__ import annotations

import functools

from torch import Tensor, nn

from scratchlm.model.primitives import Linear, activation


class DenseMLP(nn.Module):
    """down(act(up(x))): (B, T, D) -> (B, T, F) -> (B, T, D)."""

    def __init__(self, d_model: int, d_ff: int, act: str, bias: bool = False, ops: str = "torch"):
        super().__init__()
        self.up = Linear(d_model, d_ff, bias)
        self.down = Linear(d_ff, d_model, bias, residual_out=True)
        self.act = activation(act, ops)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


def _act_times(act, gate: Tensor, up: Tensor) -> Tensor:
    return act(gate) * up


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) (Shazeer 2020, 'GLU Variants Improve Transformer').

    `fused` (SwiGLU only): act(gate) * up through `scratchlm.kernels.swiglu`, one kernel each way."""

    def __init__(self, d_model: int, d_ff: int, act: str, bias: bool = False, ops: str = "torch", fused: bool = False):
        super().__init__()
        self.gate = Linear(d_model, d_ff, bias)
        self.up = Linear(d_model, d_ff, bias)
        self.down = Linear(d_ff, d_model, bias, residual_out=True)
        self.act = activation(act, ops)
        if fused and act != "silu":
            raise ValueError(f"the fused gated MLP is SwiGLU (silu), not {act!r}")
        if fused:
            from scratchlm.kernels.swiglu import swiglu  # imported here: (optional) triton loads only when used

            self.act_times = swiglu
        else:
            self.act_times = functools.partial(_act_times, self.act)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act_times(self.gate(x), self.up(x)))


# config name -> (class, activation)
MLPS = {
    "relu": (DenseMLP, "relu"),
    "gelu": (DenseMLP, "gelu"),
    "gelu_tanh": (DenseMLP, "gelu_tanh"),
    "relu2": (DenseMLP, "relu2"),
    "swiglu": (GatedMLP, "silu"),
    "geglu": (GatedMLP, "gelu"),
    "geglu_tanh": (GatedMLP, "gelu_tanh"),  # Gemma's gelu_pytorch_tanh
}


def build_ffn(name: str, d_model: int, d_ff: int, bias: bool, fused: bool = False, ops: str = "torch") -> nn.Module:
    """One dense or gated FFN (the MoE's shared expert uses it too)."""
    if name not in MLPS:
        raise ValueError(f"unknown mlp {name!r}: expected one of {', '.join(MLPS)}")
    if fused and name != "swiglu":
        raise ValueError(f"only swiglu has a fused kernel, not mlp {name!r}")
    cls, act = MLPS[name]
    return cls(d_model, d_ff, act, bias, ops, fused=True) if fused else cls(d_model, d_ff, act, bias, ops)
