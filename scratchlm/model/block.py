"""One Transformer block: mixer + feed-forward, each in a residual branch, with the norm placed
before (pre), after (post, as in the original Transformer) or on both sides (sandwich) of it."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.model.attend import Attend
from scratchlm.model.builders import build_feedforward, build_mixer
from scratchlm.model.config import ModelConfig
from scratchlm.model.context import StepContext
from scratchlm.model.norms import build_norm


class Residual(nn.Module):
    """out = norm_out(x + norm_mid(dropout(f(norm_in(x))))), unused norms being Identity:
    pre-norm uses norm_in; post-norm norm_out; sandwich norm_in and norm_mid (Ding et al. 2021)."""

    def __init__(self, cfg: ModelConfig, f: nn.Module):
        super().__init__()
        self.f = f

        def norm(used: bool) -> nn.Module:
            return build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias, cfg.ops) if used else nn.Identity()

        self.norm_in = norm(cfg.norm_placement in ("pre", "sandwich"))
        self.norm_mid = norm(cfg.norm_placement == "sandwich")
        self.norm_out = norm(cfg.norm_placement == "post")
        self.dropout = cfg.dropout_resid

    def forward(self, x: Tensor, *args) -> Tensor:
        h = F.dropout(self.f(self.norm_in(x), *args), self.dropout, self.training)
        return self.norm_out(x + self.norm_mid(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, attend: Attend):
        super().__init__()
        self.attn = Residual(cfg, build_mixer(cfg, layer, attend))
        self.ffn = Residual(cfg, build_feedforward(cfg))

    def forward(self, x: Tensor, ctx: StepContext) -> Tensor:
        return self.ffn(self.attn(x, ctx))

    @property
    def mixer(self) -> nn.Module:
        return self.attn.f

    @property
    def mlp(self) -> nn.Module:
        return self.ffn.f
