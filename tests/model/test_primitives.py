"""Own primitives against their torch twins, including extreme inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.kernels.flash_ref import naive_attention
from scratchlm.model.norms import LayerNorm, RMSNorm
from scratchlm.model.positions import RotaryEmbedding, SinusoidalPositions, apply_rotary
from scratchlm.model.primitives import (
    ACTIVATIONS,
    Embedding,
    Linear,
    cross_entropy,
    softmax,
)

torch.manual_seed(0)


def test_linear_and_embedding_match_torch():
    lin = Linear(8, 5, bias=True)
    ref = nn.Linear(8, 5)
    ref.load_state_dict(lin.state_dict())
    x = torch.randn(3, 4, 8)
    torch.testing.assert_close(lin(x), ref(x))
    assert lin.weight.abs().max() <= 3 * 0.02 + 1e-6  # truncated at 3 std
    emb = Embedding(10, 6)
    ids = torch.tensor([[1, 9, 0]])
    torch.testing.assert_close(emb(ids), F.embedding(ids, emb.weight))


@pytest.mark.parametrize("scale", [1.0, 1e4, 1e30])
def test_softmax_matches_torch_and_is_stable(scale):
    x = torch.randn(4, 7) * scale
    torch.testing.assert_close(softmax(x, -1), F.softmax(x, -1))
    assert torch.isfinite(softmax(x, -1)).all()


def test_softmax_fully_masked_row_is_zero_not_nan():
    x = torch.tensor([[0.0, 1.0], [float("-inf"), float("-inf")]])
    out = softmax(x, -1)
    torch.testing.assert_close(out[0], F.softmax(x[0], -1))
    assert torch.equal(out[1], torch.zeros(2))


@pytest.mark.parametrize("name, ref", [("relu", F.relu), ("gelu", F.gelu), ("silu", F.silu)])
def test_activations(name, ref):
    x = torch.linspace(-30, 30, 1001)
    torch.testing.assert_close(ACTIVATIONS[name](x), ref(x))


def test_gelu_tanh_and_relu2():
    x = torch.linspace(-10, 10, 101)
    torch.testing.assert_close(ACTIVATIONS["gelu_tanh"](x), F.gelu(x, approximate="tanh"))
    torch.testing.assert_close(ACTIVATIONS["relu2"](x), F.relu(x) ** 2)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_matches_torch(causal):
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    mask = torch.rand(5, 7) > 0.3
    mask[:, 0] = True  # no fully masked row here (torch gives NaN for those)
    for m in (None, mask):
        ours = naive_attention(q, k, v, causal=causal and m is None, mask=m)  # the one full-score attention
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal and m is None)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_sdpa_large_logits_and_fully_masked_rows():
    q, k, v = torch.randn(1, 1, 3, 4) * 1e4, torch.randn(1, 1, 3, 4) * 1e4, torch.randn(1, 1, 3, 4)
    out = naive_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, True]])
    out = naive_attention(q, k, v, mask=mask)
    assert torch.isfinite(out).all() and torch.equal(out[0, 0, 1], torch.zeros(4))


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e6])
def test_cross_entropy_matches_torch(scale):
    logits = torch.randn(4, 6, 11) * scale
    targets = torch.randint(0, 11, (4, 6))
    targets[0, 0] = -100
    for red in ("mean", "sum", "none"):
        torch.testing.assert_close(
            cross_entropy(logits, targets, reduction=red),
            F.cross_entropy(logits.transpose(1, 2), targets, reduction=red),
        )
    logits.requires_grad_(True)
    cross_entropy(logits, targets).backward()
    assert torch.isfinite(logits.grad).all()


def test_norms_match_torch_and_keep_dtype():
    x = torch.randn(2, 5, 16) * 100
    rms = RMSNorm(16, eps=1e-6)
    rms.weight.data.normal_()
    ref = nn.RMSNorm(16, eps=1e-6)
    ref.weight.data.copy_(rms.weight.data)
    torch.testing.assert_close(rms(x), ref(x))
    ln = LayerNorm(16, eps=1e-5)
    ln.weight.data.normal_()
    ln.bias.data.normal_()
    ref = nn.LayerNorm(16, eps=1e-5)
    ref.load_state_dict(ln.state_dict())
    torch.testing.assert_close(ln(x), ref(x))
    xb = x.bfloat16()
    assert rms(xb).dtype == torch.bfloat16 and ln(xb).dtype == torch.bfloat16
    # computed in fp32: closer to the fp32 result than a bf16-internal computation would be
    assert (rms(xb).float() - rms(x)).abs().max() < 0.05


def test_rope_rotates_relative_positions():
    rope = RotaryEmbedding(8)

    def rot(x, p):
        return apply_rotary(x, *rope.tables(torch.tensor([[p]])))

    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    dot = [(rot(q, p + s) * rot(k, s)).sum() for p, s in ((3, 0), (3, 7), (3, 100_000))]
    torch.testing.assert_close(dot[0], dot[1])  # depends only on the offset
    torch.testing.assert_close(dot[0], dot[2], rtol=1e-4, atol=1e-4)  # no table, no cap on the position
    assert torch.allclose(rot(q, 0), q)
    # the same angles as the fp64 table the layers used to keep
    inv = (1.0 / 10_000.0 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)).float().double()
    cos, sin = rope.tables(torch.arange(50)[None])
    angles = torch.outer(torch.arange(50, dtype=torch.float64), inv)
    assert torch.equal(cos[0], angles.cos().float().repeat(1, 2))
    assert torch.equal(sin[0], torch.cat([-angles.sin().float(), angles.sin().float()], dim=-1))


def test_sinusoidal_table():
    pe = SinusoidalPositions(6)(torch.arange(10))
    assert torch.allclose(pe[0], torch.tensor([0.0, 1.0] * 3))
    assert torch.allclose(pe[:, 0], torch.sin(torch.arange(10.0)))
    assert SinusoidalPositions(5)(torch.arange(3)).shape == (3, 5)


def test_cross_entropy_gradient_matches_torch():
    logits = (torch.randn(3, 5, 13) * 5).requires_grad_(True)
    ref = logits.detach().clone().requires_grad_(True)
    targets = torch.randint(0, 13, (3, 5))
    targets[1, 2] = -100
    weights = torch.randn(3, 5)
    (cross_entropy(logits, targets, reduction="none") * weights).sum().backward()
    (F.cross_entropy(ref.transpose(1, 2), targets, reduction="none") * weights).sum().backward()
    torch.testing.assert_close(logits.grad, ref.grad)
    assert torch.autograd.gradcheck(
        lambda x: cross_entropy(x, targets[:, :2]), (torch.randn(3, 2, 13, dtype=torch.float64, requires_grad=True),)
    )


def test_torch_cross_entropy_equals_the_own_one():
    from scratchlm.model.primitives import torch_cross_entropy

    logits = (torch.randn(3, 5, 13) * 4).requires_grad_(True)
    ref = logits.detach().clone().requires_grad_(True)
    targets = torch.randint(0, 13, (3, 5))
    targets[0, :2] = -100
    for red in ("mean", "sum", "none"):
        torch.testing.assert_close(
            torch_cross_entropy(logits, targets, reduction=red), cross_entropy(ref, targets, reduction=red)
        )
    torch_cross_entropy(logits, targets).backward()
    cross_entropy(ref, targets).backward()
    torch.testing.assert_close(logits.grad, ref.grad)
    none_kept = torch.full((3, 5), -100)
    assert torch_cross_entropy(logits, none_kept).item() == 0.0 == cross_entropy(logits, none_kept).item()
