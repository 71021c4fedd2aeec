"""Causal linear attention (Katharopoulos, Vyas, Pappas, Fleuret 2020, 'Transformers are RNNs').

Softmax's exp(q . k) is replaced by a feature-map kernel phi(q) . phi(k), so the causal output

    y_i = sum_{j<=i} (phi(q_i) . phi(k_j)) v_j / sum_{j<=i} phi(q_i) . phi(k_j)
        = phi(q_i)^T S_i / phi(q_i)^T z_i,   S_i = sum_{j<=i} phi(k_j) v_j^T,  z_i = sum_{j<=i} phi(k_j)

is an RNN with a (Dh x Dh) matrix state S and a (Dh,) normaliser z per kv head: constant memory
per generated token. phi is elu(x)+1 (the paper's choice, always > 0) or relu(x) (>= 0, so the
normaliser can be 0: it is guarded by EPS). There is no 1/sqrt(Dh) scale: the ratio normalises.

Three equal forms of the same function, each a pure function of (phi(q), phi(k), v):
- `linear_attention_naive`: the masked quadratic form, O(T^2) (the reference in the tests);
- `linear_attention_chunked`: training and prefill. Inside a chunk of C tokens the masked quadratic
  form, across chunks the running state: O(T C Dh + T Dh^2) time, O(T (C + Dh) + (T / C) Dh^2)
  memory per head, linear in T for a fixed chunk;
- `linear_attention_recurrent`: one token at a time, the RNN view.
The module uses the chunked form for every call; with a cache it starts from and updates the
cached state, and for a single token the chunked form is exactly one recurrent step.

Positions: none inside these layers, as in the paper, and `positions="rope"` is ignored here. RoPE
before phi loses its point (phi is nonlinear, so phi(R_i q) . phi(R_j k) is no function of i - j);
after phi the features turn signed, so RoFormer (Su et al. 2021, sec. 3.4.2) rotates only the
numerator, a variant not implemented here. A linear-attention layer thus knows order only through
causality, like NoPE. Learned or
sinusoidal positions are added to the embeddings as for any model. `dropout_attn` is not used
(there is no attention matrix to drop from); residual dropout still applies.

Grouped-query (n_kv_heads < n_heads): heads of a group share k and v, hence the state, so the
state is kept per kv head: (B, K, Dh, Dh), G = H / K times smaller than per query head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.model.cache import LayerCache
from scratchlm.model.config import ModelConfig
from scratchlm.model.context import StepContext
from scratchlm.model.primitives import Linear

EPS = 1e-6  # added to the normaliser phi(q) . z, which relu features can make exactly 0


def elu_plus_one(x: Tensor) -> Tensor:
    return F.elu(x) + 1.0


FEATURE_MAPS = {"elu": elu_plus_one, "relu": F.relu}


class LinearAttentionState(LayerCache):
    """Running sums of one layer: S = sum phi(k) v^T (B, K, Dh, Dh) and z = sum phi(k) (B, K, Dh), in
    fp32 (they are sums over the whole history, so low precision would drift)."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, device):
        self.S = torch.zeros(batch, kv_heads, head_dim, head_dim, device=device, dtype=torch.float32)
        self.z = torch.zeros(batch, kv_heads, head_dim, device=device, dtype=torch.float32)


def linear_attention_naive(q: Tensor, k: Tensor, v: Tensor, eps: float = EPS) -> Tensor:
    """Masked quadratic form. q: (B, K, G, T, Dh) = phi(queries) grouped by kv head; k, v: (B, K, T, Dh)
    (k = phi(keys)). Returns (B, K, G, T, Dh)."""
    T = q.shape[-2]
    A = torch.einsum("bkgtd,bksd->bkgts", q, k)  # (B, K, G, T, T)
    A = A * torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return torch.einsum("bkgts,bkse->bkgte", A, v) / (A.sum(-1, keepdim=True) + eps)


def linear_attention_recurrent(
    q: Tensor, k: Tensor, v: Tensor, state: tuple[Tensor, Tensor], eps: float = EPS
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Token by token: S += phi(k_t) v_t^T, z += phi(k_t), y_t = phi(q_t)^T S / (phi(q_t) . z).
    Shapes as `linear_attention_naive`; state = (S (B, K, Dh, Dh), z (B, K, Dh)), returned updated."""
    S, z = state
    ys = []
    for t in range(q.shape[-2]):
        S = S + k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, K, Dh, Dh)
        z = z + k[:, :, t]  # (B, K, Dh)
        qt = q[:, :, :, t]  # (B, K, G, Dh)
        num = torch.einsum("bkgd,bkde->bkge", qt, S)
        den = torch.einsum("bkgd,bkd->bkg", qt, z)
        ys.append(num / (den[..., None] + eps))
    return torch.stack(ys, dim=3), (S, z)  # (B, K, G, T, Dh)


def linear_attention_chunked(
    q: Tensor, k: Tensor, v: Tensor, chunk: int, state: tuple[Tensor, Tensor] | None = None, eps: float = EPS
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Chunked form, starting from `state` (zeros when None). Shapes as `linear_attention_recurrent`.

    T is zero-padded to a multiple of `chunk`; zero phi(k) and v add nothing to the state, and the
    padded queries are dropped, so any chunk size gives the same result.
    """
    B, K, G, T, Dh = q.shape
    Dv = v.shape[-1]
    n = -(-T // chunk)
    pad = n * chunk - T
    q = F.pad(q, (0, 0, 0, pad)).view(B, K, G, n, chunk, Dh)
    k = F.pad(k, (0, 0, 0, pad)).view(B, K, n, chunk, Dh)
    v = F.pad(v, (0, 0, 0, pad)).view(B, K, n, chunk, Dv)
    if state is None:
        state = (q.new_zeros(B, K, Dh, Dv), q.new_zeros(B, K, Dh))
    S0, z0 = state
    # State entering each chunk: S0 + sum of the earlier chunks' phi(k)^T v (an exclusive prefix sum).
    kv = torch.einsum("bkncd,bknce->bknde", k, v)  # (B, K, n, Dh, Dv)
    ksum = k.sum(dim=3)  # (B, K, n, Dh)
    S_prev = S0[:, :, None] + torch.cat([torch.zeros_like(kv[:, :, :1]), kv[:, :, :-1].cumsum(dim=2)], dim=2)
    z_prev = z0[:, :, None] + torch.cat([torch.zeros_like(ksum[:, :, :1]), ksum[:, :, :-1].cumsum(dim=2)], dim=2)
    # Inside each chunk: the masked quadratic form.
    A = torch.einsum("bkgncd,bknsd->bkgncs", q, k)  # (B, K, G, n, C, C)
    A = A * torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    num = torch.einsum("bkgncs,bknse->bkgnce", A, v) + torch.einsum("bkgncd,bknde->bkgnce", q, S_prev)
    den = A.sum(-1) + torch.einsum("bkgncd,bknd->bkgnc", q, z_prev)  # (B, K, G, n, C)
    y = (num / (den[..., None] + eps)).reshape(B, K, G, n * chunk, Dv)[:, :, :, :T]
    return y, (S_prev[:, :, -1] + kv[:, :, -1], z_prev[:, :, -1] + ksum[:, :, -1])


class LinearAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, window: int | None = None):
        super().__init__()
        self.layer = layer
        if window is not None:
            raise ValueError("linear attention sees the whole prefix; sliding-window layers use softmax attention")
        if cfg.linear_feature_map not in FEATURE_MAPS:
            raise ValueError(f"unknown linear_feature_map {cfg.linear_feature_map!r}: expected one of elu, relu")
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.dh
        self.chunk = cfg.linear_chunk
        self.phi = FEATURE_MAPS[cfg.linear_feature_map]
        qkv_bias = cfg.bias or cfg.qkv_bias
        self.q_proj = Linear(cfg.d_model, cfg.n_heads * cfg.dh, qkv_bias)
        self.k_proj = Linear(cfg.d_model, cfg.kv_heads * cfg.dh, qkv_bias)
        self.v_proj = Linear(cfg.d_model, cfg.kv_heads * cfg.dh, qkv_bias)
        self.o_proj = Linear(cfg.n_heads * cfg.dh, cfg.d_model, cfg.bias, residual_out=True)

    def new_cache(self, batch: int, max_len: int, device, dtype) -> LinearAttentionState:
        """Constant-size state whatever `max_len` (kept in fp32 whatever `dtype`)."""
        return LinearAttentionState(batch, self.kv_heads, self.head_dim, device)

    def forward(self, x: Tensor, ctx: StepContext) -> Tensor:
        B, T, _ = x.shape
        cache = ctx.layer_cache(self.layer)
        K, G, Dh = self.kv_heads, self.n_heads // self.kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, K, G, Dh).permute(0, 2, 3, 1, 4)  # (B, K, G, T, Dh)
        k = self.k_proj(x).view(B, T, K, Dh).transpose(1, 2)  # (B, K, T, Dh)
        v = self.v_proj(x).view(B, T, K, Dh).transpose(1, 2)  # (B, K, T, Dh)
        q, k, v = self.phi(q.float()), self.phi(k.float()), v.float()
        if ctx.padded:  # padding tokens add nothing to the running sums
            keep = ctx.valid[:, None, :, None].to(k.dtype)  # (B|1, 1, T, 1)
            k, v = k * keep, v * keep
        y, state = linear_attention_chunked(q, k, v, self.chunk, None if cache is None else (cache.S, cache.z))
        if cache is not None:
            cache.S, cache.z = state
        y = y.to(x.dtype).permute(0, 3, 1, 2, 4).reshape(B, T, K * G * Dh)  # (B, T, H*Dh), head h = k*G + g
        return self.o_proj(y)
