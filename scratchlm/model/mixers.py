"""The sequence mixer of each layer, chosen by `layer_pattern` and `attention`.

Every mixer maps (B, T, D) -> (B, T, D), is causal, and has the same interface:
    forward(x, pos, cache=None)    pos: (T,) absolute positions of the tokens of x
    new_cache(batch, max_len, device, dtype) -> state object that `forward` updates in place
so generation works with any mix of layers.
"""

from __future__ import annotations

import importlib

from torch import nn

from scratchlm.model.config import ModelConfig

# (layer letter, attention kind) -> "module:Class"; imported when first built
MIXERS = {
    ("L", "softmax"): "scratchlm.model.attention:CausalSelfAttention",
    ("S", "softmax"): "scratchlm.model.attention:CausalSelfAttention",
    ("L", "linear"): "scratchlm.model.linear_attention:LinearAttention",
    ("L", "mla"): "scratchlm.model.mla:MultiHeadLatentAttention",
    ("M", "softmax"): "scratchlm.model.ssm:S4DMixer",
    ("M", "linear"): "scratchlm.model.ssm:S4DMixer",
    ("M", "mla"): "scratchlm.model.ssm:S4DMixer",
}


def build_mixer(cfg: ModelConfig, layer: int) -> nn.Module:
    kind = cfg.layer_kind(layer)
    key = (kind, cfg.attention)
    if key not in MIXERS:
        raise ValueError(f"no mixer for layer kind {kind!r} with attention {cfg.attention!r}")
    module, cls = MIXERS[key].split(":")
    window = cfg.window if kind == "S" else None
    return getattr(importlib.import_module(module), cls)(cfg, layer, window)
