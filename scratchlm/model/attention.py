"""Softmax attention: multi-head, grouped-query and multi-query (n_kv_heads), optional QK-norm,
RoPE, full-context or sliding-window, with a KV cache for generation (full, or rolling for a
window).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.model.config import ModelConfig
from scratchlm.model.norms import build_norm
from scratchlm.model.positions import RotaryEmbedding
from scratchlm.model.primitives import Linear, scaled_dot_product_attention


class KVCache:
    """Keys and values of the tokens seen so far, with their absolute positions.

    `window` = None keeps everything (preallocated up to `max_len`); an int keeps only the last
    `window` tokens in a ring buffer, which is all a sliding-window layer can attend to.
    """

    def __init__(self, batch: int, kv_heads: int, head_dim: int, max_len: int, window: int | None, device, dtype):
        self.size = max_len if window is None else min(window, max_len)
        self.window = window
        self.k = torch.zeros(batch, kv_heads, self.size, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((self.size,), -1, dtype=torch.long, device=device)  # -1 = empty slot
        self.length = 0  # tokens seen

    def update(self, k: Tensor, v: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Add (B, K, T, Dh) keys/values at positions `pos`; return all keys/values the new queries
        may need, with their positions: (B, K, S, Dh) x2, (S,)."""
        T = k.shape[2]
        if self.window is None:
            if self.length + T > self.size:
                raise ValueError(f"KV cache full: {self.length} + {T} tokens > max_len {self.size}")
            s = slice(self.length, self.length + T)
            self.k[:, :, s], self.v[:, :, s], self.pos[s] = k, v, pos
            self.length += T
            return self.k[:, :, : self.length], self.v[:, :, : self.length], self.pos[: self.length]
        # Rolling: the new queries attend to [cached ring ; new tokens]; then the ring keeps the last `size`.
        keys = torch.cat([self.k, k], dim=2)
        values = torch.cat([self.v, v], dim=2)
        positions = torch.cat([self.pos, pos])
        keep = min(T, self.size)
        slots = (torch.arange(self.length + T - keep, self.length + T, device=pos.device)) % self.size
        self.k[:, :, slots], self.v[:, :, slots], self.pos[slots] = k[:, :, -keep:], v[:, :, -keep:], pos[-keep:]
        self.length += T
        return keys, values, positions


def attention_mask(q_pos: Tensor, k_pos: Tensor, window: int | None) -> Tensor:
    """(T, S) bool, True = may attend: key not in the future, inside the window, slot not empty."""
    diff = q_pos[:, None] - k_pos[None, :]  # (T, S)
    mask = (diff >= 0) & (k_pos[None, :] >= 0)
    if window is not None:
        mask &= diff < window
    return mask


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, window: int | None = None):
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.dh
        self.window = window
        qkv_bias = cfg.bias or cfg.qkv_bias
        self.q_proj = Linear(cfg.d_model, cfg.n_heads * cfg.dh, qkv_bias)
        self.k_proj = Linear(cfg.d_model, cfg.kv_heads * cfg.dh, qkv_bias)
        self.v_proj = Linear(cfg.d_model, cfg.kv_heads * cfg.dh, qkv_bias)
        self.o_proj = Linear(cfg.n_heads * cfg.dh, cfg.d_model, cfg.bias, residual_out=True)
        self.q_norm = build_norm(cfg.norm, cfg.dh, cfg.norm_eps, False) if cfg.qk_norm else nn.Identity()
        self.k_norm = build_norm(cfg.norm, cfg.dh, cfg.norm_eps, False) if cfg.qk_norm else nn.Identity()
        self.rope = RotaryEmbedding(cfg.dh, cfg.context_length, cfg.rope_theta) if cfg.positions == "rope" else None
        self.dropout = cfg.dropout_attn
        self.own = cfg.attn_backend == "own"
        # scratchlm.kernels' attention for full causal attention (no cache, no window, no dropout), else None.
        self.kernel = None
        if cfg.attn_backend not in ("sdpa", "own"):
            from scratchlm.kernels.attention import attention  # imported here: (optional) triton loads only when used

            self.kernel = functools.partial(attention, backend=cfg.attn_backend)

    def new_cache(self, batch: int, max_len: int, device, dtype) -> KVCache:
        return KVCache(batch, self.kv_heads, self.head_dim, max_len, self.window, device, dtype)

    def forward(self, x: Tensor, pos: Tensor, cache: KVCache | None = None) -> Tensor:
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2))  # (B, H, T, Dh)
        k = self.k_norm(self.k_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2))  # (B, K, T, Dh)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, Dh)
        if self.rope is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        if cache is None and self.window is None:
            mask, causal = None, True  # lets SDPA use its fused causal kernels
        else:
            k_pos = pos
            if cache is not None:
                k, v, k_pos = cache.update(k, v, pos)
            mask, causal = attention_mask(pos, k_pos, self.window), False
        y = self._attend(q, k, v, mask, causal)  # (B, H, T, Dh)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        p = self.dropout if self.training else 0.0
        if self.kernel is not None and mask is None and p == 0.0:
            return self.kernel(q, k, v, causal=causal)
        if not self.own:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, dropout_p=p, enable_gqa=self.kv_heads != self.n_heads
            )
        # Grouped-query without copying K/V: (B, K, G, T, Dh) queries against (B, K, 1, S, Dh) keys.
        B, H, T, Dh = q.shape
        g = H // self.kv_heads
        y = scaled_dot_product_attention(
            q.view(B, self.kv_heads, g, T, Dh), k.unsqueeze(2), v.unsqueeze(2), mask, causal, p
        )
        return y.reshape(B, H, T, Dh)
