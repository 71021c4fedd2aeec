"""The two builders of a block's sublayers: the sequence mixer (chosen by `layer_pattern` and
`attention`) and the feed-forward (dense, gated, or Mixture of Experts).

Every mixer maps (B, T, D) -> (B, T, D), is causal, and has the same interface:
    forward(x, ctx)                                 ctx: the step's StepContext (context.py)
    new_cache(batch, max_len, device, dtype) -> LayerCache that `forward` updates in place
so generation works with any mix of layers. Attention mixers (softmax, MLA) also hold the model's
`attend` callable (attend.py), shared by every layer and replaceable from outside.
"""

from __future__ import annotations

from torch import nn

from scratchlm.model.attend import Attend
from scratchlm.model.attention import CausalSelfAttention
from scratchlm.model.config import ModelConfig
from scratchlm.model.linear_attention import LinearAttention
from scratchlm.model.mla import MultiHeadLatentAttention
from scratchlm.model.mlp import build_ffn
from scratchlm.model.moe import MoE
from scratchlm.model.ssm import S4DMixer

ATTENTION_MIXERS = {"softmax": CausalSelfAttention, "mla": MultiHeadLatentAttention}


def build_mixer(cfg: ModelConfig, layer: int, attend: Attend) -> nn.Module:
    kind = cfg.layer_kind(layer)
    if kind == "M":
        return S4DMixer(cfg, layer)
    window = cfg.window if kind == "S" else None
    if cfg.attention == "linear":
        return LinearAttention(cfg, layer, window)
    if cfg.attention not in ATTENTION_MIXERS:
        raise ValueError(f"no mixer for layer kind {kind!r} with attention {cfg.attention!r}")
    return ATTENTION_MIXERS[cfg.attention](cfg, layer, attend, window)


def build_feedforward(cfg: ModelConfig) -> nn.Module:
    """The feed-forward of one block: dense/gated, or a Mixture of Experts when moe.num_experts > 0."""
    if cfg.moe.num_experts > 0:
        return MoE(cfg)
    return build_ffn(cfg.mlp, cfg.d_model, cfg.ff_dim, cfg.bias, cfg.fused_swiglu, cfg.ops)
