"""Multi-head latent attention: causality, backends, the latent-only cache, the absorbed form, training."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.model import MLAConfig, ModelConfig, TransformerLM
from scratchlm.model.attend import build_attend
from scratchlm.model.cache import KVCache
from scratchlm.model.context import mixer_context
from scratchlm.model.mla import LatentCache, MultiHeadLatentAttention
from scratchlm.model.positions import RotaryEmbedding, apply_rotary

V, CTX = 64, 32
MLAS = {
    "default_dims": MLAConfig(kv_lora_rank=16, rope_head_dim=4),
    "low_rank_q": MLAConfig(kv_lora_rank=12, q_lora_rank=10, rope_head_dim=4, nope_head_dim=6, v_head_dim=10),
}


def tiny(mla: MLAConfig, **kw) -> ModelConfig:
    base = dict(vocab_size=V, context_length=CTX, d_model=32, n_layers=2, n_heads=4, attention="mla", mla=mla)
    return ModelConfig(**(base | kw))


def model(cfg: ModelConfig, seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(cfg).eval()


@pytest.mark.parametrize("positions", ["rope", "none"])
@pytest.mark.parametrize("name", list(MLAS))
def test_causal(name, positions):
    m = model(tiny(MLAS[name], positions=positions))
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    base = m(ids)
    assert base.shape == (2, 12, V) and torch.isfinite(base).all()
    for t in (0, 5, 10):
        changed = ids.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % V
        out = m(changed)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])


@pytest.mark.parametrize("name", list(MLAS))
def test_own_backend_matches_sdpa(name):
    ids = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(2))
    a = model(tiny(MLAS[name], attn_backend="sdpa"))
    b = model(tiny(MLAS[name], attn_backend="own"))
    torch.testing.assert_close(a(ids), b(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", ["rope", "none"])
@pytest.mark.parametrize("name", list(MLAS))
def test_cache_pieces_equal_full_forward(name, positions):
    m = model(tiny(MLAS[name], positions=positions))
    ids = torch.randint(0, V, (2, 14), generator=torch.Generator().manual_seed(3))
    full = m(ids)
    cache = m.new_cache(batch=2, max_len=20)
    outs, start = [], 0
    for n in (5, 1, 1, 4, 3):  # prefill, single-token steps, then a multi-token chunk
        outs.append(m(ids[:, start : start + n], cache=cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-5, atol=1e-5)


def test_cache_holds_only_latent_and_shared_rope_key():
    mla = MLAConfig(kv_lora_rank=12, rope_head_dim=4)
    cfg = tiny(mla, d_model=64, n_heads=4)  # Dh = 16
    m = model(cfg)
    mixer = m.blocks["0"].mixer
    assert mixer.cache_dims_per_token == 12 + 4
    cache = m.new_cache(batch=3, max_len=10)
    layer = cache.layers[0]
    assert isinstance(layer, LatentCache)
    per_token = sum(t.numel() for t in (layer.c_kv, layer.k_rope)) // (3 * 10)
    assert per_token == mixer.cache_dims_per_token
    # bytes per token and layer in bf16: (R + Dr) * 2 = 32, against 2 * H * Dh * 2 = 256 for softmax MHA.
    softmax_cache = KVCache(3, cfg.n_heads, cfg.dh, 10, None, "cpu", torch.bfloat16)
    softmax_bytes = (softmax_cache.k.numel() + softmax_cache.v.numel()) * 2 // (3 * 10)
    assert (per_token * 2, softmax_bytes) == (32, 256)
    nope = model(tiny(mla, positions="none")).blocks["0"].mixer
    assert nope.rope_dim == 0 and nope.cache_dims_per_token == 12


def test_cache_overflow_raises():
    m = model(tiny(MLAS["default_dims"]))
    cache = m.new_cache(batch=1, max_len=4)
    m(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="cache full"):
        m(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def absorbed_attention(mixer: MultiHeadLatentAttention, x: torch.Tensor) -> torch.Tensor:
    """Reference: DeepSeek-V2's absorbed form, attention computed on the latent itself.

    q_nope . (W_uk,h c) = (W_uk,h^T q_nope) . c and sum_j p_j W_uv,h c_j = W_uv,h sum_j p_j c_j, so
    only c (and k_rope) per token is ever needed."""
    B, T, _ = x.shape
    H, Dn, Dr, Dv, R = mixer.n_heads, mixer.nope_dim, mixer.rope_dim, mixer.v_dim, mixer.latent_dim
    tables = RotaryEmbedding(Dr).tables(torch.arange(T)[None]) if Dr else None

    def rope(t):
        return apply_rotary(t, *tables) if Dr else t

    q = mixer.q_proj(x).view(B, T, H, Dn + Dr).transpose(1, 2)
    q_nope, q_rope = q[..., :Dn], rope(q[..., Dn:])
    c, k_rope = mixer.kv_down(x).split([R, Dr], dim=-1)
    c, k_rope = mixer.kv_norm(c), rope(k_rope.unsqueeze(1))  # (B, T, R), (B, 1, T, Dr)
    w = mixer.kv_up.weight.view(H, Dn + Dv, R)
    w_uk, w_uv = w[:, :Dn], w[:, Dn:]  # (H, Dn, R), (H, Dv, R)
    q_lat = torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk)  # (B, H, T, R)
    scores = (torch.einsum("bhtr,bsr->bhts", q_lat, c) + q_rope @ k_rope.transpose(-2, -1)) / math.sqrt(Dn + Dr)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y_lat = torch.einsum("bhts,bsr->bhtr", scores.softmax(-1), c)  # (B, H, T, R)
    y = torch.einsum("bhtr,hvr->bthv", y_lat, w_uv).reshape(B, T, H * Dv)
    return mixer.o_proj(y)


@pytest.mark.parametrize("positions", ["rope", "none"])
@pytest.mark.parametrize("name", list(MLAS))
def test_simple_form_equals_absorbed_form(name, positions):
    mixer = model(tiny(MLAS[name], positions=positions)).blocks["0"].mixer
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(4))
    ctx = mixer_context(torch.arange(9), RotaryEmbedding(mixer.rope_dim) if mixer.rope_dim else None)
    torch.testing.assert_close(mixer(x, ctx), absorbed_attention(mixer, x), rtol=1e-4, atol=1e-5)


def test_window_refused():
    with pytest.raises(ValueError, match="full-context"):
        MultiHeadLatentAttention(tiny(MLAS["default_dims"]), 0, build_attend(tiny(MLAS["default_dims"])), window=4)


@pytest.mark.parametrize("name", list(MLAS))
def test_train_step_changes_every_parameter(name):
    m = model(tiny(MLAS[name], dropout_attn=0.1, tie_embeddings=False)).train()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(5))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(m(ids[:, :-1]).reshape(-1, V), ids[:, 1:].reshape(-1))
    loss.backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    opt.step()
    unchanged = [n for n, p in m.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged
