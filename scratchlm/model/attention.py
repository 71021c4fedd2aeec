"""Softmax attention: multi-head, grouped-query and multi-query (n_kv_heads), optional QK-norm,
RoPE (sliding-window layers may have their own base: `rope_local_theta`), full-context or
sliding-window, with a KV cache for generation (full, or rolling for a window). The inner product is
the model's `attend` (`attend.py`), decided once from the config; scores are scaled by
attn_scale_dim**-0.5 when set (Gemma's query_pre_attn_scalar), else by head_dim**-0.5.
"""

from __future__ import annotations

from torch import Tensor, nn

from scratchlm.model.attend import Attend
from scratchlm.model.cache import KVCache, attention_mask
from scratchlm.model.config import ModelConfig
from scratchlm.model.context import StepContext
from scratchlm.model.norms import build_norm
from scratchlm.model.positions import apply_rotary
from scratchlm.model.primitives import Linear


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, attend: Attend, window: int | None = None):
        super().__init__()
        self.layer = layer
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.dh
        self.window = window
        qkv_bias = cfg.bias or cfg.qkv_bias
        self.q_proj = Linear(cfg.d_model, cfg.n_heads * cfg.dh, qkv_bias)
        self.k_proj = Linear(cfg.d_model, cfg.kv_heads * cfg.dh, qkv_bias)
        self.v_proj = Linear(cfg.d_model, cfg.kv_heads * cfg.dh, qkv_bias)
        self.o_proj = Linear(cfg.n_heads * cfg.dh, cfg.d_model, cfg.bias, residual_out=True)
        qk_norm = cfg.qk_norm
        self.q_norm = build_norm(cfg.norm, cfg.dh, cfg.norm_eps, False, cfg.ops) if qk_norm else nn.Identity()
        self.k_norm = build_norm(cfg.norm, cfg.dh, cfg.norm_eps, False, cfg.ops) if qk_norm else nn.Identity()
        self.rotary = cfg.positions == "rope"
        self.local_rope = window is not None and cfg.local_rope  # read ctx.rope_local instead of ctx.rope
        self.scale = cfg.attn_scale_dim**-0.5 if cfg.attn_scale_dim else None  # None: attend's 1/sqrt(Dh)
        self.dropout = cfg.dropout_attn
        self.attend = attend

    def new_cache(self, batch: int, max_len: int, device, dtype) -> KVCache:
        return KVCache(batch, self.kv_heads, self.head_dim, max_len, self.window, device, dtype)

    def forward(self, x: Tensor, ctx: StepContext) -> Tensor:
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2))  # (B, H, T, Dh)
        k = self.k_norm(self.k_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2))  # (B, K, T, Dh)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, Dh)
        if self.rotary:
            rope = ctx.rope_local if self.local_rope else ctx.rope
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        cache = ctx.layer_cache(self.layer)
        # a paged cache (the inference engine's) attends a decode step over its blocks itself, without a gather
        paged = getattr(cache, "decode_attention", None)
        y = paged(q, k, v, self.window, self.scale) if paged is not None else None  # (B, H, T, Dh) | None
        if y is None:
            if cache is None and self.window is None and not ctx.padded:
                mask, causal = None, True  # lets SDPA / FlashAttention use their fused causal kernels
            else:
                k_pos = ctx.positions
                if cache is not None:
                    k, v, k_pos = cache.update(k, v, ctx.positions)
                mask, causal = attention_mask(ctx.positions, k_pos, self.window), False
            p = self.dropout if self.training else 0.0
            y = self.attend(q, k, v, causal=causal, mask=mask, dropout_p=p, scale=self.scale)  # (B, H, T, Dh)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
