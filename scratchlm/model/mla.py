"""Multi-head latent attention, MLA (DeepSeek-AI 2024, 'DeepSeek-V2', arXiv 2405.04434, section 2.1).

Keys and values of all heads are up-projected from one small latent per token, so the generation
cache stores the latent instead of per-head keys and values:

    c_kv   = norm(W_dkv x)                         (B, T, R)       R = kv_lora_rank
    k_nope = W_uk c_kv,  v = W_uv c_kv             (B, H, T, Dn), (B, H, T, Dv)
    k_rope = RoPE(W_kr x)                          (B, 1, T, Dr)   one rotary key shared by all heads
    q      = W_q x  (or W_uq norm(W_dq x) when q_lora_rank > 0), split per head into
             [q_nope ; RoPE(q_rope)]               (B, H, T, Dn + Dr)
    y      = softmax([q_nope ; q_rope] . [k_nope ; k_rope] / sqrt(Dn + Dr)) v, causal

The rotary part is "decoupled" (eq. 14-19 of the paper) because RoPE between W_uk and the latent
would make the cached latent position-dependent. With `positions="none"` (NoPE) there is no
decoupled part at all (Dr is taken as 0): without a rotation it would only add Dr shared
position-free key dims, which the latent already provides. `n_kv_heads` is not used: the latent is
what the heads share.

Cache: per token and layer only c_kv (after its norm) and the rotated k_rope, i.e.
(R + Dr) * bytes(dtype), e.g. (64 + 16) * 2 = 160 B in bf16, against 2 * K * Dh * 2 B for a softmax
KV cache (K=H=8, Dh=64: 2048 B). Decoding here uses the simple form: K and V of every cached token
are recomputed from the latent at each step (W_uk, W_uv applied to the whole cache). The paper's
absorbed form folds W_uk into the query and W_uv into the output projection so attention runs on
the latent directly; it gives the same result with less compute and is left out for clarity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scratchlm.model.attend import Attend
from scratchlm.model.cache import LayerCache, attention_mask
from scratchlm.model.config import ModelConfig
from scratchlm.model.context import StepContext
from scratchlm.model.norms import build_norm
from scratchlm.model.positions import apply_rotary
from scratchlm.model.primitives import Linear


class LatentCache(LayerCache):
    """The normalised KV latent and the rotated shared RoPE key of every token seen so far:
    (B, max_len, R) and (B, max_len, Dr), preallocated, with each slot's position per row (-1 = empty
    or padding)."""

    def __init__(self, batch: int, latent_dim: int, rope_dim: int, max_len: int, device, dtype):
        self.c_kv = torch.zeros(batch, max_len, latent_dim, device=device, dtype=dtype)
        self.k_rope = torch.zeros(batch, max_len, rope_dim, device=device, dtype=dtype)
        self.pos = torch.full((batch, max_len), -1, dtype=torch.long, device=device)
        self.length = 0

    def update(self, c_kv: Tensor, k_rope: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append (B, T, R) latents and (B, T, Dr) keys at positions (B|1, T); return everything cached,
        with positions (B, S)."""
        B, T = c_kv.shape[:2]
        if self.length + T > self.c_kv.shape[1]:
            raise ValueError(f"MLA cache full: {self.length} + {T} tokens > max_len {self.c_kv.shape[1]}")
        s = slice(self.length, self.length + T)
        self.c_kv[:, s], self.k_rope[:, s], self.pos[:, s] = c_kv, k_rope, pos.expand(B, T)
        self.length += T
        return self.c_kv[:, : self.length], self.k_rope[:, : self.length], self.pos[:, : self.length]


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, attend: Attend, window: int | None = None):
        super().__init__()
        self.layer = layer
        if window is not None:
            raise ValueError("MLA is full-context attention; sliding-window layers use softmax attention")
        m = cfg.mla
        H = self.n_heads = cfg.n_heads
        self.latent_dim = R = m.kv_lora_rank
        self.rope_dim = Dr = m.rope_head_dim if cfg.positions == "rope" else 0
        self.nope_dim = Dn = m.nope_head_dim or cfg.dh
        self.v_dim = Dv = m.v_head_dim or cfg.dh
        bias = cfg.bias or cfg.qkv_bias
        if m.q_lora_rank:  # low-rank query with its own latent norm (DeepSeek-V2 eq. 12-13)
            self.q_proj = nn.Sequential(
                Linear(cfg.d_model, m.q_lora_rank, bias),
                build_norm(cfg.norm, m.q_lora_rank, cfg.norm_eps, False, cfg.ops),
                Linear(m.q_lora_rank, H * (Dn + Dr), bias),
            )
        else:
            self.q_proj = Linear(cfg.d_model, H * (Dn + Dr), bias)
        self.kv_down = Linear(cfg.d_model, R + Dr, bias)  # W_dkv and W_kr in one matmul
        self.kv_norm = build_norm(cfg.norm, R, cfg.norm_eps, False, cfg.ops)
        self.kv_up = Linear(R, H * (Dn + Dv), bias)  # W_uk and W_uv in one matmul
        self.o_proj = Linear(H * Dv, cfg.d_model, cfg.bias, residual_out=True)
        self.attend = attend
        self.dropout = cfg.dropout_attn

    @property
    def cache_dims_per_token(self) -> int:
        """Numbers cached per token in this layer: the latent and the shared RoPE key, R + Dr."""
        return self.latent_dim + self.rope_dim

    def new_cache(self, batch: int, max_len: int, device, dtype) -> LatentCache:
        return LatentCache(batch, self.latent_dim, self.rope_dim, max_len, device, dtype)

    def _rotate(self, x: Tensor, ctx: StepContext) -> Tensor:
        return apply_rotary(x, *ctx.rope) if self.rope_dim else x

    def forward(self, x: Tensor, ctx: StepContext) -> Tensor:
        B, T, _ = x.shape
        H, Dn, Dr, Dv = self.n_heads, self.nope_dim, self.rope_dim, self.v_dim
        q = self.q_proj(x).view(B, T, H, Dn + Dr).transpose(1, 2)  # (B, H, T, Dn+Dr)
        q = torch.cat([q[..., :Dn], self._rotate(q[..., Dn:], ctx)], dim=-1)
        c_kv, k_rope = self.kv_down(x).split([self.latent_dim, Dr], dim=-1)  # (B, T, R), (B, T, Dr)
        c_kv = self.kv_norm(c_kv)
        k_rope = self._rotate(k_rope.unsqueeze(1), ctx).squeeze(1)  # rotated once, at its own position
        cache = ctx.layer_cache(self.layer)
        if cache is None and not ctx.padded:
            mask, causal = None, True
        else:
            k_pos = ctx.positions
            if cache is not None:
                c_kv, k_rope, k_pos = cache.update(c_kv, k_rope, ctx.positions)  # (B, S, R), (B, S, Dr), (B, S)
            mask, causal = attention_mask(ctx.positions, k_pos, None), False
        S = c_kv.shape[1]
        kv = self.kv_up(c_kv).view(B, S, H, Dn + Dv).transpose(1, 2)  # (B, H, S, Dn+Dv)
        k_nope, v = kv.split([Dn, Dv], dim=-1)  # (B, H, S, Dn), (B, H, S, Dv)
        k = torch.cat([k_nope, k_rope.unsqueeze(1).expand(B, H, S, Dr)], dim=-1)  # (B, H, S, Dn+Dr)
        p = self.dropout if self.training else 0.0
        y = self.attend(q, k, v, causal=causal, mask=mask, dropout_p=p)  # (B, H, T, Dv)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * Dv))
