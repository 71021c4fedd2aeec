"""Mixture of Experts: equals the dense MLP with one expert, routes/drops as documented, aux losses,
shared expert, init, trainability and causality (dropless)."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.config import load_config
from scratchlm.model import ModelConfig, MoEConfig, TransformerLM
from scratchlm.model.mlp import MLPS, build_ffn
from scratchlm.model.moe import MoE
from scratchlm.model.primitives import cross_entropy


def moe_cfg(mlp: str = "swiglu", bias: bool = False, init_std: float = 0.02, **moe) -> ModelConfig:
    kw = dict(num_experts=4, top_k=2, d_expert=48) | moe
    base = dict(vocab_size=97, context_length=32, d_model=32, n_layers=2, n_heads=4, init_std=init_std)
    return ModelConfig(**base, mlp=mlp, bias=bias, moe=MoEConfig(**kw))


def make_moe(**kw) -> MoE:
    torch.manual_seed(0)
    return MoE(moe_cfg(**kw))


def reference(moe: MoE, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Token by token: softmax, top-k, renormalise; expert e takes assignments in token order until
    its capacity is full. Returns the output and the assignments each expert processed."""
    E, k = moe.num_experts, moe.top_k
    xf = x.reshape(-1, x.shape[-1])
    cap = moe.capacity(xf.shape[0]) if moe.capacity_factor > 0 else math.inf
    used = [0] * E
    out = torch.zeros_like(xf)
    for t in range(xf.shape[0]):
        p = torch.softmax(moe.router(xf[t]).float(), -1)
        g, idx = p.topk(k)
        g = g / g.sum()
        for gate, e in zip(g.tolist(), idx.tolist()):
            if used[e] < cap:
                used[e] += 1
                out[t] += gate * moe.experts.expert(e, xf[t : t + 1])[0]
    if moe.shared is not None:
        out += moe.shared(xf)
    return out.view_as(x), used


def route_all_to(moe: MoE, expert: int, x: torch.Tensor) -> torch.Tensor:
    """Make the router send every token of (positive-shifted) x to `expert` first."""
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[expert] = 1.0
    return x.abs() + 1.0  # every feature > 0, so logit[expert] = sum(x) > 0 = the others


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("mlp", list(MLPS))
def test_one_expert_top1_equals_dense_mlp(mlp, bias):
    cfg = moe_cfg(mlp, bias, num_experts=1, top_k=1, d_expert=0)
    torch.manual_seed(0)
    dense = build_ffn(mlp, cfg.d_model, cfg.ff_dim, bias)
    moe = MoE(cfg)
    ex = moe.experts
    with torch.no_grad():
        for name in ("up", "gate", "down"):
            if hasattr(dense, name):
                getattr(ex, f"w_{name}")[0] = getattr(dense, name).weight
                if bias:
                    getattr(ex, f"b_{name}")[0] = getattr(dense, name).bias
                    getattr(dense, name).bias.normal_()  # nonzero biases, copied below
                    getattr(ex, f"b_{name}")[0] = getattr(dense, name).bias
    x = torch.randn(2, 7, cfg.d_model)
    torch.testing.assert_close(moe(x), dense(x))
    assert moe.tokens_per_expert.tolist() == [14] and int(moe.dropped_tokens) == 0


@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_dropless_matches_token_by_token_reference(mlp, top_k):
    moe = make_moe(mlp=mlp, top_k=top_k, shared_expert=True)
    x = torch.randn(2, 9, 32)
    ref, used = reference(moe, x)
    torch.testing.assert_close(moe(x), ref, rtol=1e-5, atol=1e-6)
    assert moe.tokens_per_expert.tolist() == used and sum(used) == 18 * top_k
    assert int(moe.dropped_tokens) == 0


@pytest.mark.parametrize("cf, top_k", [(0.5, 2), (1.0, 1), (1.25, 2), (0.3, 3)])
def test_capacity_mode_keeps_first_tokens_and_drops_overflow(cf, top_k):
    moe = make_moe(top_k=top_k, capacity_factor=cf)
    x = torch.randn(2, 10, 32)
    N = 20
    assert moe.capacity(N) == math.ceil(cf * N * top_k / 4)
    ref, used = reference(moe, x)
    y = moe(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    counts = moe.tokens_per_expert.tolist()
    assert counts == used and max(counts) <= moe.capacity(N)
    assert int(moe.dropped_tokens) == N * top_k - sum(counts)


def test_capacity_overflow_counts_when_one_expert_is_chosen_by_all():
    moe = make_moe(num_experts=4, top_k=1, capacity_factor=1.0)
    x = route_all_to(moe, 2, torch.randn(1, 16, 32))
    y = moe(x)
    # C = ceil(1.0 * 16 * 1 / 4) = 4: the first 4 tokens reach expert 2, the other 12 are dropped.
    assert moe.tokens_per_expert.tolist() == [0, 0, 4, 0] and int(moe.dropped_tokens) == 12
    torch.testing.assert_close(y[0, :4], moe.experts.expert(2, x[0, :4]))
    assert torch.equal(y[0, 4:], torch.zeros_like(y[0, 4:]))


def test_capacity_mode_is_not_causal_across_the_batch():
    """Documented: sequence 1's tokens compete with all of sequence 0's, later positions included."""
    moe = make_moe(num_experts=2, top_k=1, capacity_factor=1.0)  # C = ceil(8 / 2) = 4
    x = route_all_to(moe, 0, torch.randn(2, 4, 32))
    y = moe(x)
    assert torch.equal(y[1], torch.zeros_like(y[1]))  # sequence 0 took all of expert 0's capacity
    x2 = x.clone()
    x2[0, 3] = -x2[0, 3]  # sequence 0's last token now prefers expert 1, freeing a slot
    y2 = moe(x2)
    torch.testing.assert_close(y2[0, :3], y[0, :3])  # within a sequence, earlier tokens are unaffected
    assert not torch.allclose(y2[1, 0], y[1, 0])  # but sequence 1, position 0 now gets expert 0


def test_aux_losses_uniform_routing_is_the_balanced_minimum():
    moe = make_moe(num_experts=4, top_k=2, aux_loss_coef=0.01, z_loss_coef=0.001)
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        moe.router.weight.zero_()  # every router probability 1/E
    moe(x)
    # P_e = 1/E for all e, so E * sum_e f_e P_e = sum_e f_e = 1; logsumexp(0, ..., 0) = log E.
    torch.testing.assert_close(moe.balance_loss, torch.tensor(0.01))
    torch.testing.assert_close(moe.z_loss, torch.tensor(0.001 * math.log(4) ** 2))
    torch.testing.assert_close(moe.aux_loss.detach(), moe.balance_loss + moe.z_loss)
    # Concentrated routing: every token's top choice is expert 1 with high probability.
    xs = route_all_to(moe, 1, x)
    moe(xs)
    assert moe.balance_loss > 0.01 * 1.5 and moe.z_loss > 0.001 * math.log(4) ** 2
    # Random routing lands in between, and both terms are always positive.
    with torch.no_grad():
        moe.router.weight.normal_(0, 0.02)
    moe(x)
    assert 0 < moe.balance_loss < 0.015 and moe.z_loss > 0


def test_aux_loss_reaches_the_router_and_model_sums_it():
    cfg = load_config(ModelConfig, "model", "moe-debug")
    torch.manual_seed(0)
    model = TransformerLM(cfg)
    model(torch.randint(0, cfg.vocab_size, (2, 16)))
    moes = [b.mlp for b in model.blocks.values()]
    torch.testing.assert_close(model.aux_loss(), sum(m.aux_loss for m in moes))
    model.aux_loss().backward()
    assert all(m.router.weight.grad.abs().sum() > 0 for m in moes)


def test_shared_expert_is_added_to_the_routed_output():
    moe = make_moe(shared_expert=True)
    x = torch.randn(2, 5, 32)
    y = moe(x)
    shared = moe.shared(x)
    moe.shared = None
    torch.testing.assert_close(y, moe(x) + shared)
    d_expert = 48
    assert sum(p.numel() for p in make_moe(shared_expert=True).shared.parameters()) == 3 * 32 * d_expert


def test_init_and_reset_parameters():
    cfg = moe_cfg(num_experts=8, d_expert=256, init_std=0.05, bias=True)
    torch.manual_seed(0)
    model = TransformerLM(cfg)  # init_weights calls MoE.reset_parameters
    moe = model.blocks["0"].mlp
    ex = moe.experts
    for w, std in ((ex.w_up, 0.05), (ex.w_gate, 0.05), (ex.w_down, 0.05 / math.sqrt(4)), (moe.router.weight, 0.05)):
        assert abs(w.std().item() - std) < 0.1 * std
        assert w.abs().max() <= 3 * std + 1e-7  # truncated at 3 std
    assert all(torch.equal(b, torch.zeros_like(b)) for b in (ex.b_up, ex.b_gate, ex.b_down))
    assert moe.shared is None and moe.capacity_factor == 0.0


def test_train_step_changes_every_parameter_and_grads_finite():
    torch.manual_seed(0)
    model = TransformerLM(load_config(ModelConfig, "model", "moe-debug")).train()
    x = torch.randint(0, 512, (2, 17))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = cross_entropy(model(x[:, :-1]), x[:, 1:]) + model.aux_loss()
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    opt.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged
    assert all(b.mlp.tokens_per_expert.min() > 0 for b in model.blocks.values())  # every expert saw tokens


@pytest.mark.parametrize("shared", [False, True])
def test_dropless_moe_model_is_causal(shared):
    cfg = load_config(ModelConfig, "model", "moe-debug", [f"moe.shared_expert={str(shared).lower()}"])
    torch.manual_seed(0)
    model = TransformerLM(cfg).eval()
    x = torch.randint(0, 512, (2, 12))
    a = model(x)
    for t in (0, 5, 10):
        y = x.clone()
        y[:, t + 1] = (y[:, t + 1] + 1) % 512
        b = model(y)
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_moe_model_generates_with_cache_like_full_forward():
    torch.manual_seed(0)
    model = TransformerLM(load_config(ModelConfig, "model", "moe-debug")).eval()
    x = torch.randint(0, 512, (2, 10))
    full = model(x)
    cache = model.new_cache(batch=2, max_len=16)
    pieces = torch.cat([model(x[:, :6], cache=cache), model(x[:, 6:8], cache=cache), model(x[:, 8:], cache=cache)], 1)
    torch.testing.assert_close(pieces, full, rtol=1e-4, atol=1e-5)


def test_bf16_forward_and_backward():
    moe = make_moe(shared_expert=True).to(torch.bfloat16)
    x = torch.randn(2, 6, 32, dtype=torch.bfloat16, requires_grad=True)
    y = moe(x)
    assert y.dtype == torch.bfloat16
    (y.float().square().mean() + moe.aux_loss).backward()
    assert torch.isfinite(x.grad.float()).all()
    assert moe.aux_loss.dtype == torch.float32


def test_top1_router_learns_from_the_loss_only_without_renormalisation():
    from scratchlm.config import from_dict
    from scratchlm.model import ModelConfig, TransformerLM
    from scratchlm.model.primitives import cross_entropy

    base = dict(vocab_size=50, context_length=16, d_model=16, n_layers=1, n_heads=2)
    x = torch.randint(0, 50, (2, 9))
    grads = {}
    for renorm in (True, False):
        torch.manual_seed(0)
        moe = dict(num_experts=4, top_k=1, renormalize=renorm, aux_loss_coef=0.0, z_loss_coef=0.0)
        model = TransformerLM(from_dict(ModelConfig, {**base, "moe": moe}))
        cross_entropy(model(x[:, :-1]), x[:, 1:]).backward()
        grads[renorm] = model.blocks["0"].mlp.router.weight.grad
    assert grads[True] is None or grads[True].abs().max() < 1e-9  # gate == p/p == 1: rounding noise only
    assert grads[False].abs().max() > 1e-6
