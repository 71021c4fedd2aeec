"""Every variant of the family: causal, trainable, finite; and the equivalences between variants."""

from __future__ import annotations

import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.model.primitives import cross_entropy

BASE = dict(vocab_size=97, context_length=32, d_model=32, n_layers=2, n_heads=4)

VARIANTS = {
    "default (rope, rmsnorm, pre, swiglu)": {},
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1),
    "sliding SL": dict(layer_pattern="SL", window=4),
    "post-norm layernorm learned gelu": dict(norm_placement="post", norm="layernorm", positions="learned", mlp="gelu"),
    "sandwich sinusoidal relu2": dict(norm_placement="sandwich", positions="sinusoidal", mlp="relu2"),
    "nope geglu qk-norm": dict(positions="none", mlp="geglu", qk_norm=True),
    "gpt2-like (bias, gelu_tanh, layernorm)": dict(bias=True, mlp="gelu_tanh", norm="layernorm", positions="learned"),
    "qwen-like qkv bias untied relu": dict(qkv_bias=True, tie_embeddings=False, mlp="relu"),
    "own attention backend gqa": dict(attn_backend="own", n_kv_heads=2, layer_pattern="LS", window=3),
    "dropout": dict(dropout_embd=0.1, dropout_attn=0.1, dropout_resid=0.1),
    "no final norm": dict(final_norm=False),
    "mla": dict(attention="mla", mla={"kv_lora_rank": 8, "q_lora_rank": 8, "rope_head_dim": 4}),
    "linear attention": dict(attention="linear", linear_chunk=5, n_kv_heads=2),
    "s4d hybrid ML": dict(layer_pattern="ML"),
    "moe dropless + shared expert": dict(moe={"num_experts": 4, "top_k": 2, "shared_expert": True}),
    "moe top-1 switch gates": dict(moe={"num_experts": 3, "top_k": 1, "renormalize": False}, mlp="relu2"),
}


def make(**kw) -> TransformerLM:
    from scratchlm.config import from_dict

    torch.manual_seed(0)
    return TransformerLM(from_dict(ModelConfig, {**BASE, **kw}))


@pytest.mark.parametrize("kw", VARIANTS.values(), ids=VARIANTS.keys())
def test_causal(kw):
    model = make(**kw).eval()
    x = torch.randint(0, 97, (2, 12))
    y = x.clone()
    y[:, 7] = (y[:, 7] + 1) % 97
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-5, rtol=0)  # the S4D FFT adds ~1e-7 of rounding
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("kw", VARIANTS.values(), ids=VARIANTS.keys())
def test_train_step_changes_every_parameter_and_grads_finite(kw):
    model = make(**kw).train()
    x = torch.randint(0, 97, (2, 12))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = cross_entropy(model(x[:, :-1]), x[:, 1:]) + model.aux_loss()
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    opt.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged


@pytest.mark.parametrize("kw", VARIANTS.values(), ids=VARIANTS.keys())
def test_cached_forward_equals_full_forward(kw):
    model = make(**kw).eval()
    x = torch.randint(0, 97, (2, 20))
    full = model(x)
    cache = model.new_cache(2, 32)
    pieces = [model(x[:, a:b], cache=cache) for a, b in ((0, 7), (7, 8), (8, 15), (15, 20))]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = make(n_kv_heads=2).eval()
    mha = make(n_kv_heads=4).eval()
    state = gqa.state_dict()
    for name, w in list(state.items()):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            state[name] = (
                w.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
            )  # kv head g -> query heads 2g, 2g+1
    mha.load_state_dict(state)
    x = torch.randint(0, 97, (2, 12))
    torch.testing.assert_close(gqa(x), mha(x))


def test_n_kv_heads_equal_to_heads_is_mha():
    x = torch.randint(0, 97, (1, 10))
    torch.testing.assert_close(make(n_kv_heads=4).eval()(x), make().eval()(x))


def test_sliding_window_at_least_sequence_equals_full():
    x = torch.randint(0, 97, (2, 12))
    full = make().eval()
    for window in (12, 30):
        sliding = make(layer_pattern="S", window=window).eval()
        sliding.load_state_dict(full.state_dict())
        torch.testing.assert_close(sliding(x), full(x))
    narrow = make(layer_pattern="S", window=3).eval()
    narrow.load_state_dict(full.state_dict())
    assert not torch.allclose(narrow(x), full(x))


def test_own_backend_equals_sdpa():
    x = torch.randint(0, 97, (2, 12))
    for kw in ({}, dict(n_kv_heads=1, layer_pattern="SL", window=5)):
        a, b = make(**kw).eval(), make(attn_backend="own", **kw).eval()
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_weight_tying_and_init():
    model = make()
    assert model.head.weight is model.embed.weight
    untied = make(tie_embeddings=False)
    assert untied.head.weight is not untied.embed.weight
    o = model.blocks["0"].mixer.o_proj.weight
    q = model.blocks["0"].mixer.q_proj.weight
    assert o.std() < q.std()  # residual outputs scaled by 1/sqrt(2L)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(n_heads=5), "does not divide d_model"),
        (dict(n_kv_heads=3), "must divide n_heads"),
        (dict(layer_pattern="SL", window=0), "window=0"),
        (dict(layer_pattern="LX"), "may only use the letters"),
        (dict(attention="mla", positions="sinusoidal"), "MLA uses decoupled RoPE"),
        (dict(attention="linear", layer_pattern="S", window=4), "sliding-window layers need attention='softmax'"),
        (dict(positions="rope", head_dim=7), "even head dim"),
        (dict(moe={"num_experts": 2, "top_k": 3}), "top_k=3"),
        (dict(dropout_attn=1.0), "dropout_attn"),
    ],
)
def test_invalid_combinations_fail_at_construction(kw, message):
    from scratchlm.config import from_dict

    with pytest.raises(ScratchLMError, match=message):
        TransformerLM(from_dict(ModelConfig, {**BASE, **kw}))


def test_too_long_sequence_with_learned_positions():
    model = make(positions="learned")
    with pytest.raises(ValueError, match="beyond the 32 learned positions"):
        model(torch.zeros(1, 33, dtype=torch.long))
