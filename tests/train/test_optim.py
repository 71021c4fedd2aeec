"""Optimizers: AdamW equals torch.optim.AdamW, Newton-Schulz orthogonalises, Muon/SOAP/AdamW
converge, the grouping rule partitions every model variant, clipping equals torch's, and
save/load in the middle of a run changes nothing (bitwise)."""

from __future__ import annotations

import io

import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.model import ModelConfig, MoEConfig, TransformerLM
from scratchlm.model.moe import GroupedExperts, MoE
from scratchlm.model.norms import LayerNorm
from scratchlm.model.primitives import Embedding, Linear, cross_entropy
from scratchlm.train.config import OptimConfig
from scratchlm.train.optim import (
    MATRIX,
    SOAP,
    AdamW,
    Muon,
    build_optimizer,
    clip_grad_norm,
    newton_schulz,
    param_groups,
)

V = 64


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=V, context_length=16, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    return ModelConfig(**(base | kw))


def make_model(seed: int = 0, **kw) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(tiny(**kw))


def batches(n: int, B: int = 2, T: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, V, (B, T + 1), generator=g) for _ in range(n)]
    return [(x[:, :-1], x[:, 1:]) for x in ids]


def train_step(model: TransformerLM, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    loss = cross_entropy(model(x), y) + model.aux_loss()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


# ---------------------------------------------------------------------------------------------
# AdamW


class MLPLM(torch.nn.Module):
    """A small model of every parameter kind (embedding, norm gain and bias, biased and unbiased
    matrices, untied head) that runs 1000 steps in a second: embed -> LayerNorm -> MLP -> head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = Embedding(V, 16)
        self.norm = LayerNorm(16)
        self.up, self.down = Linear(16, 32, bias=True), Linear(32, 16)
        self.head = Linear(16, V)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.embed(x))  # (B, T, D)
        return self.head(h + self.down(torch.relu(self.up(h))))  # (B, T, V)


def test_adamw_matches_torch_over_1000_steps():
    cfg = OptimConfig(lr=1e-2, betas=[0.9, 0.95], weight_decay=0.1, decay_embeddings=True)
    models = MLPLM(), MLPLM()
    ours = AdamW(param_groups(models[0], cfg), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    ref_groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in param_groups(models[1], cfg)]
    ref = torch.optim.AdamW(ref_groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    data = batches(8)
    for step in range(1000):
        x, y = data[step % len(data)]
        for model, opt in zip(models, (ours, ref)):
            cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    moved = max((a - b).abs().max().item() for a, b in zip(models[0].parameters(), MLPLM().parameters()))
    assert moved > 0.1  # the run went somewhere
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # in fact bitwise equal: same ops in the same order


def test_adamw_defaults_equal_torch():
    ref = torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults
    ours = AdamW([torch.zeros(1, requires_grad=True)]).defaults
    for k in ("lr", "betas", "eps", "weight_decay"):
        assert ours[k] == ref[k]


# ---------------------------------------------------------------------------------------------
# Muon


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 48 + 16), (3, 24, 40)])
def test_newton_schulz_is_nearly_orthogonal(shape):
    torch.manual_seed(0)
    G = torch.randn(shape)
    X = newton_schulz(G, steps=5)
    assert X.shape == G.shape
    s = torch.linalg.svdvals(X)  # (..., min(rows, cols))
    # The quintic sends every scaled singular value in [3e-3, 1] into [0.682, 1.202] after 5 steps
    # (iterate p(s) = a s + b s^3 + c s^5 on a grid): near-orthogonal, not orthogonal.
    assert s.min() > 0.67 and s.max() < 1.21, (s.min().item(), s.max().item())
    # Same directions as the exact polar factor U V^T.
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    cos = (X * (U @ Vh)).sum(dim=(-2, -1)) / (X.norm(dim=(-2, -1)) * (U @ Vh).norm(dim=(-2, -1)))
    assert (cos > 0.95).all()


def test_newton_schulz_batched_equals_per_slice():
    torch.manual_seed(0)
    G = torch.randn(3, 24, 40)
    X = newton_schulz(G)
    for e in range(3):
        torch.testing.assert_close(X[e], newton_schulz(G[e]), atol=1e-6, rtol=0)


def test_muon_first_step_is_scaled_orthogonalised_gradient():
    """Zero momentum: the Nesterov blend is a multiple of g, so step 1 is -lr * scale * NS(g)."""
    torch.manual_seed(0)
    for shape in [(3, 20, 12), (12, 20)]:  # tall expert slices: scale sqrt(20/12); wide: 1
        p = torch.nn.Parameter(torch.randn(shape))
        p0 = p.detach().clone()
        p.grad = torch.randn(shape)
        Muon([p], lr=0.02, weight_decay=0.0).step()
        scale = max(1.0, shape[-2] / shape[-1]) ** 0.5
        torch.testing.assert_close(p.detach(), p0 - 0.02 * scale * newton_schulz(p.grad), atol=1e-6, rtol=0)


def test_muon_rejects_vectors():
    p = torch.nn.Parameter(torch.randn(5))
    p.grad = torch.randn(5)
    with pytest.raises(ValueError, match="Muon needs matrices"):
        Muon([p]).step()


# ---------------------------------------------------------------------------------------------
# SOAP


def test_soap_first_step_builds_the_eigenbasis_then_adam_in_it():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, 10))
    p0 = p.detach().clone()
    opt = SOAP([p], lr=0.1, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
    p.grad = torch.randn(6, 10)
    opt.step()
    assert torch.equal(p.detach(), p0)  # step 1 only initialises the preconditioner (as the reference)
    state = opt.state[p]
    for side in ("L", "R"):
        Q, M = state["Q_" + side], state[side]
        torch.testing.assert_close(Q.mT @ Q, torch.eye(Q.shape[0]), atol=1e-5, rtol=0)
        D = Q.mT @ M @ Q
        torch.testing.assert_close(D, torch.diag(torch.diagonal(D)), atol=1e-5, rtol=0)  # diagonalises M
        assert (torch.diagonal(D).diff() <= 1e-6).all()  # eigenvalues descending
    # Step 2, zero moments: Adam's first step is lr * sign(g') in the rotated basis.
    QL, QR = state["Q_L"], state["Q_R"]
    g = torch.randn(6, 10)
    p.grad = g
    opt.step()
    expected = p0 - 0.1 * QL @ torch.sign(QL.mT @ g @ QR) @ QR.mT
    torch.testing.assert_close(p.detach(), expected, atol=1e-5, rtol=0)


def test_soap_caps_and_vectors():
    torch.manual_seed(0)
    wide = torch.nn.Parameter(torch.randn(4, 20))  # right side over the cap: left-only
    vec = torch.nn.Parameter(torch.randn(7))  # plain Adam, updates from step 1
    experts = torch.nn.Parameter(torch.randn(3, 5, 6))  # per-expert factors
    opt = SOAP([wide, vec, experts], max_precond_dim=8)
    v0 = vec.detach().clone()
    for p in (wide, vec, experts):
        p.grad = torch.randn(p.shape)
    opt.step()
    assert set(opt.state[wide]) >= {"L", "Q_L"} and "R" not in opt.state[wide]
    assert "L" not in opt.state[vec] and not torch.equal(vec.detach(), v0)
    assert opt.state[experts]["L"].shape == (3, 5, 5) and opt.state[experts]["R"].shape == (3, 6, 6)


# ---------------------------------------------------------------------------------------------
# convergence


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: AdamW([p], lr=3e-2, weight_decay=0.0),
        lambda p: Muon([p], lr=0.05),
        lambda p: SOAP([p], lr=3e-2, weight_decay=0.0, precondition_frequency=5),
    ],
    ids=["adamw", "muon", "soap"],
)
def test_least_squares_converges(make_opt):
    torch.manual_seed(0)
    X, W_true = torch.randn(256, 32), torch.randn(16, 32) / 32**0.5
    Y = X @ W_true.T
    W = torch.nn.Parameter(torch.zeros(16, 32))
    opt = make_opt(W)

    def loss() -> torch.Tensor:
        return (X @ W.T - Y).square().mean()

    first = loss().item()
    for _ in range(150):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < first / 100


@pytest.mark.parametrize("name", ["adamw", "muon", "soap"])
def test_tiny_lm_overfits_a_batch(name):
    model = make_model(n_layers=2)
    opt = build_optimizer(model, OptimConfig(name=name, lr=1e-2, soap_precondition_frequency=5))
    x, y = batches(1, B=4, T=16)[0]
    losses = [train_step(model, opt, x, y) for _ in range(40)]
    assert losses[-1] < losses[0] / 3, losses[::8]


# ---------------------------------------------------------------------------------------------
# grouping rule

VARIANTS = {
    "tied": {},
    "untied_learned_bias": dict(tie_embeddings=False, positions="learned", bias=True, norm="layernorm"),
    "moe": dict(moe=MoEConfig(num_experts=4, top_k=2, d_expert=16, shared_expert=True), bias=True),
    "s4d": dict(layer_pattern="ML", n_layers=2),
    "mla": dict(attention="mla"),
    "linear_attention": dict(attention="linear"),
    "qk_norm_sliding": dict(qk_norm=True, layer_pattern="S", window=4),
}


def expected_kind(model: TransformerLM, name: str) -> str:
    if name in ("embed.weight", "pos_embed.weight", "head.weight"):
        return "embeddings"
    module = model.get_submodule(name.rsplit(".", 1)[0])
    leaf = name.rsplit(".", 1)[1]
    if isinstance(module, Linear) and leaf == "weight" or isinstance(module, GroupedExperts) and leaf.startswith("w_"):
        return MATRIX
    return "no_decay"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_param_groups_partition_every_variant(variant, decay_embeddings):
    model = make_model(**VARIANTS[variant])
    cfg = OptimConfig(weight_decay=0.1, decay_embeddings=decay_embeddings)
    groups = param_groups(model, cfg)
    where = {id(p): g["name"] for g in groups for p in g["params"]}
    assert sum(p.numel() for g in groups for p in g["params"]) == model.num_params
    for name, p in model.named_parameters():  # tied weights appear once, under their first name
        assert where[id(p)] == expected_kind(model, name), name
    by_name = {g["name"]: g for g in groups}
    assert by_name[MATRIX]["weight_decay"] == 0.1 and by_name["no_decay"]["weight_decay"] == 0.0
    assert by_name["embeddings"]["weight_decay"] == (0.1 if decay_embeddings else 0.0)
    assert all(p.ndim >= 2 for p in by_name[MATRIX]["params"])
    assert [g["name"] for g in groups] == ["embeddings", "no_decay", MATRIX]  # AdamW groups first


def test_param_groups_specific_parameters():
    model = make_model(**VARIANTS["moe"], tie_embeddings=False)
    where = {id(p): g["name"] for g in param_groups(model, OptimConfig()) for p in g["params"]}
    moe = next(m for m in model.modules() if isinstance(m, MoE))
    assert where[id(model.head.weight)] == "embeddings"
    assert where[id(moe.experts.w_up)] == MATRIX and where[id(moe.experts.b_up)] == "no_decay"  # (E, F) bias
    assert where[id(moe.router.weight)] == MATRIX
    ssm = make_model(**VARIANTS["s4d"])
    where = {id(p): g["name"] for g in param_groups(ssm, OptimConfig()) for p in g["params"]}
    for name, p in ssm.named_parameters():
        if ".ssm." in name:
            assert where[id(p)] == "no_decay", name


def test_param_groups_skip_frozen_parameters():
    model = make_model()
    model.blocks["0"].mixer.q_proj.weight.requires_grad_(False)
    groups = param_groups(model, OptimConfig())
    assert all(p is not model.blocks["0"].mixer.q_proj.weight for g in groups for p in g["params"])


@pytest.mark.parametrize("name", ["adamw", "muon", "soap"])
def test_build_optimizer_groups(name):
    model = make_model(**VARIANTS["moe"])
    cfg = OptimConfig(name=name, lr=3e-3, muon_lr=0.05)
    opt = build_optimizer(model, cfg)
    assert type(opt).__name__ == {"adamw": "AdamW", "muon": "Muon", "soap": "SOAP"}[name]
    for g in opt.param_groups:
        matrix = g["name"] == MATRIX
        assert g["algorithm"] == (name if matrix else "adamw")
        assert g["lr"] == g["initial_lr"] == (0.05 if matrix and name == "muon" else 3e-3)
    x, y = batches(1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, opt, x, y)
    train_step(model, opt, x, y)  # SOAP's first step only builds its preconditioner
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
    assert all(changed)


def test_build_optimizer_rejects_unknown_names():
    with pytest.raises(ScratchLMError, match="unknown optimizer"):
        build_optimizer(make_model(), OptimConfig(name="sgd"))
    with pytest.raises(ValueError, match="cannot run"):
        AdamW([{"params": [torch.nn.Parameter(torch.zeros(2, 2))], "algorithm": "muon"}])


# ---------------------------------------------------------------------------------------------
# clipping


def grads_pair(values: list[torch.Tensor]) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    ps = []
    for _ in range(2):
        group = [torch.nn.Parameter(torch.zeros_like(v)) for v in values]
        for p, v in zip(group, values):
            p.grad = v.clone()
        ps.append(group)
    ps[0].append(torch.nn.Parameter(torch.zeros(3)))  # no grad: ignored by both
    ps[1].append(torch.nn.Parameter(torch.zeros(3)))
    return ps[0], ps[1]


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
@pytest.mark.parametrize("bad", [None, float("inf"), float("nan")])
def test_clip_grad_norm_matches_torch(max_norm, bad):
    torch.manual_seed(0)
    values = [torch.randn(4, 5), torch.randn(7), torch.randn(2, 3, 4)]
    if bad is not None:
        values[1][2] = bad
    ours, ref = grads_pair(values)
    n_ours = clip_grad_norm(ours, max_norm)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    torch.testing.assert_close(n_ours, n_ref, atol=0, rtol=0, equal_nan=True)
    for a, b in zip(ours, ref):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=0, rtol=0, equal_nan=True)
    if bad is None and max_norm == 0.5:
        total = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in ours if p.grad is not None]))
        assert abs(total.item() - 0.5) < 1e-5
    if bad is None and max_norm == 1e6:
        assert all(torch.equal(p.grad, v) for p, v in zip(ours, values))  # untouched


def test_clip_grad_norm_without_grads():
    assert clip_grad_norm([torch.nn.Parameter(torch.zeros(2))], 1.0).item() == 0.0


# ---------------------------------------------------------------------------------------------
# resume == no interruption


@pytest.mark.parametrize("name", ["adamw", "muon", "soap"])
def test_state_dict_round_trip_is_exact(name):
    cfg = OptimConfig(name=name, lr=1e-2, weight_decay=0.1, soap_precondition_frequency=3)
    kw = dict(moe=MoEConfig(num_experts=2, top_k=1, d_expert=16), bias=True)
    data = batches(9, seed=1)
    N = 4

    straight = make_model(**kw)
    opt = build_optimizer(straight, cfg)
    for x, y in data:
        train_step(straight, opt, x, y)

    first = make_model(**kw)
    opt = build_optimizer(first, cfg)
    for x, y in data[:N]:
        train_step(first, opt, x, y)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": opt.state_dict()}, buf)
    del first, opt
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = make_model(seed=1, **kw)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    opt = build_optimizer(resumed, cfg)
    opt.load_state_dict(saved["optim"])
    for x, y in data[N:]:
        train_step(resumed, opt, x, y)

    for (n, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n
