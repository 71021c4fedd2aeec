"""The model's kernel switches (attn_backend kernel backends, norm="rmsnorm_fused", fused_swiglu,
fused_loss): same results as the plain model, the fallbacks they document, and their config checks."""

from __future__ import annotations

import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.model.generate import generate
from scratchlm.model.primitives import cross_entropy

BASE = dict(vocab_size=97, context_length=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)


def make(**kw) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(**{**BASE, **kw}))


def ids(B=2, T=21) -> torch.Tensor:
    return torch.randint(0, 97, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("backend", ["auto", "reference", "naive"])
def test_kernel_attention_backends_match_sdpa(backend):
    """Full-attention layers go through scratchlm.kernels; the sliding-window layer (a mask) through SDPA."""
    x = ids()
    kw = dict(layer_pattern="LS", window=5)
    a, b = make(**kw).eval(), make(attn_backend=backend, **kw).eval()
    assert (a(x) - b(x)).abs().max() < 1e-5
    # Greedy decoding with the KV cache (the SDPA path) equals recomputing the prefix (the kernel path).
    cached = generate(b, x[:1, :4], 6, temperature=0)
    assert torch.equal(cached, generate(b, x[:1, :4], 6, temperature=0, use_cache=False))
    assert torch.equal(cached, generate(a, x[:1, :4], 6, temperature=0))


def test_fused_switches_give_the_plain_loss_and_gradients():
    x = ids()
    plain = make()
    fused = make(norm="rmsnorm_fused", fused_swiglu=True, fused_loss=True, attn_backend="reference")
    fused.load_state_dict(plain.state_dict())
    losses = []
    for m in (plain, fused):
        loss = loss_of(m, x[:, :-1], x[:, 1:])
        loss.backward()
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) < 1e-5
    fused_params = dict(fused.named_parameters())
    for name, p in plain.named_parameters():
        assert (p.grad - fused_params[name].grad).abs().max() < 1e-5, name
    assert (plain(x) - fused(x)).abs().max() < 1e-5


def test_loss_equals_cross_entropy_of_logits_with_ignored_targets():
    m = make(fused_loss=True)
    x = ids()
    y = x[:, 1:].clone()
    y[0, :5] = -100
    want = cross_entropy(m(x[:, :-1]), y)
    assert abs(loss_of(m, x[:, :-1], y).item() - want.item()) < 1e-5


def test_triton_backend_on_cpu_is_a_clear_error():
    m = make(attn_backend="triton")
    with pytest.raises(ScratchLMError, match="attention backend 'triton' cannot run here"):
        m(ids())


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(attention="mla", attn_backend="reference"), "MLA takes 'sdpa' or 'naive'"),
        (dict(attn_backend="triton", dropout_attn=0.1), "no attention dropout"),
        (dict(fused_swiglu=True, mlp="geglu"), "fused_swiglu needs mlp='swiglu'"),
        (dict(fused_swiglu=True, moe={"num_experts": 2}), "fused_swiglu needs"),
    ],
)
def test_config_checks(kw, match):
    from scratchlm.config import from_dict

    with pytest.raises(ScratchLMError, match=match):
        from_dict(ModelConfig, {**BASE, **kw}).validate()


def test_auto_with_attention_dropout_trains_through_sdpa():
    m = make(attn_backend="auto", dropout_attn=0.1).train()
    x = ids()
    loss_of(m, x[:, :-1], x[:, 1:]).backward()
    assert all(p.grad is not None for p in m.parameters())


def loss_of(m, x, y):
    """The training loss of model `m` (fused head + loss when its config says so), as `train_step` computes it."""
    from scratchlm.train.losses import FusedLMLoss, LMLoss

    fn = FusedLMLoss() if m.config.fused_loss else LMLoss()
    return fn(m(x, output=fn.needs), y, m)[0]
