"""Causal linear attention: chunked == quadratic == recurrent, state carry-over, GQA, model behaviour."""

from __future__ import annotations

import pytest
import torch

from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.model.context import mixer_context
from scratchlm.model.linear_attention import (
    FEATURE_MAPS,
    LinearAttention,
    LinearAttentionState,
    linear_attention_chunked,
    linear_attention_naive,
    linear_attention_recurrent,
)

V = 64


def qkv(feature_map: str, B=2, K=2, G=2, T=13, Dh=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    phi = FEATURE_MAPS[feature_map]
    q = phi(torch.randn(B, K, G, T, Dh, generator=g, dtype=torch.float64))
    k = phi(torch.randn(B, K, T, Dh, generator=g, dtype=torch.float64))
    v = torch.randn(B, K, T, Dh, generator=g, dtype=torch.float64)
    return q, k, v


def zero_state(q):
    B, K, _, _, Dh = q.shape
    return q.new_zeros(B, K, Dh, Dh), q.new_zeros(B, K, Dh)


@pytest.mark.parametrize("feature_map", list(FEATURE_MAPS))
def test_chunked_equals_quadratic_equals_recurrent(feature_map):
    q, k, v = qkv(feature_map)  # T = 13
    ref = linear_attention_naive(q, k, v)
    rec, (S, z) = linear_attention_recurrent(q, k, v, zero_state(q))
    torch.testing.assert_close(rec, ref)
    for chunk in (1, 2, 3, 4, 5, 8, 13, 16, 64):  # dividing T, not dividing T, > T
        y, (S_c, z_c) = linear_attention_chunked(q, k, v, chunk)
        torch.testing.assert_close(y, ref, msg=f"chunk={chunk}")
        torch.testing.assert_close(S_c, S)
        torch.testing.assert_close(z_c, z)
    torch.testing.assert_close(S, torch.einsum("bktd,bkte->bkde", k, v))  # state = sum phi(k) v^T
    torch.testing.assert_close(z, k.sum(2))


@pytest.mark.parametrize("split", [1, 4, 7, 12])
def test_chunked_continues_from_a_state(split):
    q, k, v = qkv("elu", T=13, seed=1)
    full, (S, z) = linear_attention_chunked(q, k, v, chunk=4)
    a, state = linear_attention_chunked(q[:, :, :, :split], k[:, :, :split], v[:, :, :split], chunk=3)
    b, (S2, z2) = linear_attention_chunked(q[:, :, :, split:], k[:, :, split:], v[:, :, split:], 5, state)
    torch.testing.assert_close(torch.cat([a, b], dim=3), full)
    torch.testing.assert_close((S2, z2), (S, z))


def test_relu_zero_normaliser_is_guarded():
    q, k, v = qkv("relu", T=6)
    k = torch.zeros_like(k)  # relu of all-negative keys: phi(q) . z = 0 everywhere
    y, _ = linear_attention_chunked(q, k, v, chunk=4)
    assert torch.isfinite(y).all() and (y == 0).all()


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=V, context_length=32, d_model=32, n_layers=2, n_heads=4, attention="linear", linear_chunk=4)
    return ModelConfig(**(base | kw))


def model(cfg: ModelConfig, seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(cfg).eval()


@pytest.mark.parametrize("kw", [{}, {"linear_feature_map": "relu", "n_kv_heads": 2}, {"n_kv_heads": 1}])
def test_causal(kw):
    m = model(tiny(**kw))
    ids = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(1))  # 11: not a multiple of 4
    base = m(ids)
    assert base.shape == (2, 11, V) and torch.isfinite(base).all()
    for t in (0, 3, 4, 9):
        changed = ids.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % V
        out = m(changed)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])


@pytest.mark.parametrize("kw", [{}, {"linear_feature_map": "relu", "n_kv_heads": 2}])
def test_cache_pieces_equal_full_forward_with_constant_state(kw):
    m = model(tiny(**kw))
    ids = torch.randint(0, V, (2, 14), generator=torch.Generator().manual_seed(2))
    full = m(ids)
    cache = m.new_cache(batch=2, max_len=1000)
    shapes = [(s.S.shape, s.z.shape) for s in cache.layers]
    outs, start = [], 0
    for n in (5, 1, 1, 6, 1):
        outs.append(m(ids[:, start : start + n], cache=cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-5, atol=1e-5)
    assert [(s.S.shape, s.z.shape) for s in cache.layers] == shapes  # constant memory per token
    K = m.config.kv_heads
    assert shapes[0] == ((2, K, 8, 8), (2, K, 8)) and isinstance(cache.layers[0], LinearAttentionState)


def test_grouped_query_equals_multi_head_with_shared_kv():
    """n_kv_heads=2 with 4 query heads == 4 heads whose k/v weights repeat each kv head twice."""
    gqa = LinearAttention(tiny(n_kv_heads=2), 0, None)
    mha = LinearAttention(tiny(), 0, None)
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
            getattr(mha, name).weight.copy_(w)
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(3))
    ctx = mixer_context(torch.arange(9))
    torch.testing.assert_close(gqa(x, ctx), mha(x, ctx))


def test_rope_setting_is_ignored():
    ids = torch.randint(0, V, (1, 10), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(model(tiny(positions="rope"))(ids), model(tiny(positions="none"))(ids))


def test_chunk_size_does_not_change_the_model():
    ids = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(5))
    ref = model(tiny(linear_chunk=64))(ids)
    for chunk in (1, 3, 5):
        torch.testing.assert_close(model(tiny(linear_chunk=chunk))(ids), ref, rtol=1e-5, atol=1e-5)


def test_window_refused():
    with pytest.raises(ValueError, match="whole prefix"):
        LinearAttention(tiny(), 0, window=4)


def test_train_step_changes_every_parameter():
    m = model(tiny(tie_embeddings=False, n_kv_heads=2)).train()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(6))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(m(ids[:, :-1]).reshape(-1, V), ids[:, 1:].reshape(-1))
    loss.backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    opt.step()
    assert not [n for n, p in m.named_parameters() if torch.equal(p, before[n])]
