"""S4D mixer: its convolution, chunked and recurrent forms agree with a naive materialised kernel;
it is causal, trainable, and generates with a constant-size cache inside a hybrid model."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.model import ModelConfig, SSMConfig, TransformerLM
from scratchlm.model.context import mixer_context
from scratchlm.model.primitives import cross_entropy
from scratchlm.model.ssm import S4DMixer

D, N = 16, 8
BASE = dict(vocab_size=61, context_length=48, d_model=D, n_layers=2, n_heads=2, ssm=SSMConfig(state_dim=N))


def make_mixer(dtype=torch.float64) -> S4DMixer:
    torch.manual_seed(0)
    return S4DMixer(ModelConfig(**BASE, layer_pattern="M"), layer=0).to(dtype)


def reference_params(ssm):
    """A, dt, C, D from the raw parameters, written out independently of DiagonalSSM."""
    A = -torch.exp(ssm.log_A_real.detach()) + 1j * ssm.A_imag.detach()  # (H, N/2)
    dt = torch.exp(ssm.log_dt.detach())[:, None]  # (H, 1)
    C = ssm.C.detach()[..., 0] + 1j * ssm.C.detach()[..., 1]
    return A, dt, C, ssm.D.detach()


def naive_ssm(ssm, u):
    """O(T^2): materialise the (T, T) lower-triangular Toeplitz matrix of K_l per channel."""
    A, dt, C, skip = reference_params(ssm)
    T = u.shape[-1]
    lags = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # (T, T): t - j
    Kbar = C * (torch.exp(dt * A) - 1) / A  # B = 1
    terms = Kbar[:, :, None, None] * torch.exp(dt * A)[:, :, None, None] ** lags.clamp(min=0)  # (H, N/2, T, T)
    M = 2 * terms.sum(1).real * (lags >= 0)  # (H, T, T); conjugate pairs -> 2 Re
    return torch.einsum("htj,bhj->bht", M, u) + skip[:, None] * u


def recurrent_ssm(ssm, u):
    """Token by token: s_t = exp(dt A) s_{t-1} + dB u_t, y_t = 2 Re(C s_t) + D u_t."""
    A, dt, C, skip = reference_params(ssm)
    a, dB = torch.exp(dt * A), (torch.exp(dt * A) - 1) / A
    s = torch.zeros(u.shape[0], *A.shape, dtype=A.dtype)
    ys = []
    for t in range(u.shape[-1]):
        s = a * s + dB * u[:, :, t, None]
        ys.append(2 * (C * s).sum(-1).real + skip * u[:, :, t])
    return torch.stack(ys, dim=-1)


def test_conv_equals_recurrence_equals_naive_kernel():
    ssm = make_mixer().ssm
    u = torch.randn(2, D, 40, dtype=torch.float64)
    conv = ssm.conv(u).detach()
    torch.testing.assert_close(conv, naive_ssm(ssm, u), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(conv, recurrent_ssm(ssm, u), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("chunks", [[1] * 20, [7, 1, 12], [20], [3, 5, 1, 11]])
def test_cached_mixer_in_any_chunks_equals_full(chunks):
    m = make_mixer().eval()
    x = torch.randn(2, 20, D, dtype=torch.float64)
    full = m(x, mixer_context(torch.arange(20)))
    cache = m.new_cache(2, 20, x.device, x.dtype)
    outs, t = [], 0
    for n in chunks:
        outs.append(m(x[:, t : t + n], mixer_context(torch.arange(t, t + n), layer_cache=cache)))
        t += n
    assert cache.state.shape == (2, D, N // 2) and cache.length == 20
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-12, rtol=1e-10)


def test_init_is_s4d_lin_and_survives_init_weights():
    cfg = SSMConfig(state_dim=N, dt_min=1e-3, dt_max=1e-1)
    model = TransformerLM(ModelConfig(**{**BASE, "ssm": cfg}, layer_pattern="M"))
    ssm = model.blocks["0"].mixer.ssm
    torch.testing.assert_close(torch.exp(ssm.log_A_real), torch.full((D, N // 2), 0.5))
    torch.testing.assert_close(ssm.A_imag, math.pi * torch.arange(N // 2).float().expand(D, -1))
    dt = torch.exp(ssm.log_dt)
    assert ((dt >= 1e-3 * (1 - 1e-6)) & (dt <= 1e-1 * (1 + 1e-6))).all()


def test_causal_up_to_fft_rounding():
    m = make_mixer(torch.float32).eval()
    x = torch.randn(1, 24, D)
    y = x.clone()
    y[:, 10] += 1.0
    ctx = mixer_context(torch.arange(24))
    a, b = m(x, ctx), m(y, ctx)
    # The FFT mixes every position, so the past moves by rounding error only (~1e-7), never by signal.
    torch.testing.assert_close(a[:, :10], b[:, :10], atol=1e-5, rtol=0)
    assert (a[:, 10:] - b[:, 10:]).abs().amax() > 1e-3


def test_long_sequence_and_bf16_stay_finite():
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**{**BASE, "context_length": 1024}, layer_pattern="ML")).eval()
    ids = torch.randint(0, 61, (1, 1024))
    assert torch.isfinite(model(ids)).all()
    model = model.to(torch.bfloat16)
    cache = model.new_cache(1)
    assert torch.isfinite(model(ids[:, :16], cache)).all() and torch.isfinite(model(ids[:, 16:17], cache)).all()


def test_train_step_changes_every_parameter_and_grads_finite():
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**BASE, layer_pattern="ML", dropout_attn=0.1)).train()
    x = torch.randint(0, 61, (2, 16))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cross_entropy(model(x[:, :-1]), x[:, 1:]).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    opt.step()
    assert not [n for n, p in model.named_parameters() if torch.equal(p, before[n])]


def test_hybrid_cached_greedy_generation_equals_uncached():
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**BASE, layer_pattern="ML")).eval()
    prompt = torch.randint(0, 61, (2, 6))
    with torch.no_grad():
        uncached = prompt
        for _ in range(10):  # recompute the whole sequence for every token
            nxt = model(uncached)[:, -1].argmax(-1, keepdim=True)
            uncached = torch.cat([uncached, nxt], 1)
        cache = model.new_cache(2, max_len=16)
        logits = model(prompt, cache)  # prefill through the FFT path, then one recurrence step per token
        cached = prompt
        for _ in range(10):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            cached = torch.cat([cached, nxt], 1)
            logits = model(nxt, cache)
    assert torch.equal(cached, uncached)
    ssm_state = cache.layers[0].state
    assert ssm_state.shape == (2, D, N // 2)  # constant memory per sequence, whatever the length


def test_generate_with_cache_equals_without_for_hybrid():
    generate = pytest.importorskip("scratchlm.model.generate").generate
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**{**BASE, "n_layers": 3}, layer_pattern="MLM"))
    prompt = torch.randint(0, 61, (2, 5))
    cached = generate(model, prompt, max_new_tokens=8, temperature=0, use_cache=True)
    assert torch.equal(cached, generate(model, prompt, max_new_tokens=8, temperature=0, use_cache=False))
