"""Unstructured and 2:4 pruning on tiny random models, against brute-force references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scratchlm.compress.prune import (
    apply_masks,
    is_24,
    keep_masks,
    magnitude_prune,
    mask_24,
    prunable_linears,
    semi_structured_24,
    smallest_k,
    sparsity_report,
    to_semi_structured,
)
from scratchlm.errors import InvalidArgument, ScratchLMError
from scratchlm.model.config import ModelConfig
from scratchlm.model.transformer import TransformerLM

LINEARS = ["attn.f.q_proj", "attn.f.k_proj", "attn.f.v_proj", "attn.f.o_proj", "ffn.f.gate", "ffn.f.up", "ffn.f.down"]


def tiny(seed: int = 0, **kw) -> TransformerLM:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, context_length=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48)
    return TransformerLM(ModelConfig(**{**cfg, **kw})).eval()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_prunable_linears_are_the_block_linears():
    model = tiny()
    names = prunable_linears(model)
    assert sorted(names) == sorted(f"blocks.{i}.{n}" for i in range(2) for n in LINEARS)
    assert all(m is not model.head for m in names.values())
    assert sorted(prunable_linears(model, r"ffn\.f\.(gate|up)$")) == [
        "blocks.0.ffn.f.gate",
        "blocks.0.ffn.f.up",
        "blocks.1.ffn.f.gate",
        "blocks.1.ffn.f.up",
    ]


def test_smallest_k_exact_with_ties():
    scores = torch.tensor([3.0, 0.0, 1.0, 0.0, 1.0, 0.0, 2.0])
    assert smallest_k(scores, 0).tolist() == [False] * 7
    assert smallest_k(scores, 2).tolist() == [False, True, False, True, False, False, False]
    assert smallest_k(scores, 4).tolist() == [False, True, True, True, False, True, False]
    for k in range(8):  # against a stable sort
        want = torch.zeros(7, dtype=torch.bool)
        want[torch.sort(scores, stable=True).indices[:k]] = True
        assert torch.equal(smallest_k(scores, k), want)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_magnitude_prune_global_matches_brute_force(sparsity):
    model = tiny()
    linears = prunable_linears(model)
    weights = {n: m.weight.detach().clone() for n, m in linears.items()}
    everything = torch.cat([w.abs().flatten() for w in weights.values()])
    k = round(sparsity * everything.numel())
    threshold = everything.sort().values[k - 1] if k else -1.0  # random weights: no ties
    masks = magnitude_prune(model, sparsity, scope="global")
    for n, m in linears.items():
        want = weights[n].abs() > threshold
        assert torch.equal(masks[n], want)
        assert torch.equal(m.weight, torch.where(want, weights[n], 0.0))
    report = sparsity_report(model)
    assert report["zeros"] == k and report["total"] == everything.numel()
    assert report["sparsity"] == pytest.approx(sparsity, abs=1 / everything.numel())


def test_magnitude_prune_layer_scope_prunes_each_linear_exactly():
    model = tiny()
    weights = {n: m.weight.detach().clone() for n, m in prunable_linears(model).items()}
    masks = magnitude_prune(model, 0.5, scope="layer")
    report = sparsity_report(model)
    for n, w in weights.items():
        k = round(0.5 * w.numel())
        assert report["linears"][n]["zeros"] == k == int((~masks[n]).sum())
        kept = w.abs()[masks[n]]
        assert kept.min() > w.abs()[~masks[n]].max()  # the kept weights are the larger ones
    assert model.head.weight.count_nonzero() == model.head.weight.numel()  # the tied head/embedding untouched


def test_magnitude_prune_global_differs_from_layer_when_scales_differ():
    model = tiny()
    with torch.no_grad():
        w = model.blocks["0"].ffn.f.down.weight
        w.copy_(w.sign() * (1.0 + w.abs()))  # |w| >= 1 against <= 0.06 elsewhere: global spares it entirely
    magnitude_prune(model, 0.5, scope="global")
    assert sparsity_report(model)["linears"]["blocks.0.ffn.f.down"]["zeros"] == 0
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.5, abs=1e-4)


def test_include_filter_prunes_only_matching():
    model = tiny()
    attn_before = model.blocks["0"].attn.f.q_proj.weight.clone()
    masks = magnitude_prune(model, 0.5, include=r"\.ffn\.")
    assert set(masks) == {f"blocks.{i}.ffn.f.{p}" for i in range(2) for p in ("gate", "up", "down")}
    assert torch.equal(model.blocks["0"].attn.f.q_proj.weight, attn_before)
    assert sparsity_report(model, r"\.ffn\.")["sparsity"] == pytest.approx(0.5)


def test_mask_24_brute_force():
    torch.manual_seed(1)
    w = torch.randn(5, 12)
    keep = mask_24(w)
    for r in range(5):
        for g in range(3):
            group = w[r, 4 * g : 4 * g + 4].abs()
            want = {i for i in range(4) if (group > group[i]).sum() < 2}  # the 2 largest
            assert {i for i in range(4) if keep[r, 4 * g + i]} == want


def test_semi_structured_24_pattern():
    model = tiny()
    before = {n: m.weight.detach().clone() for n, m in prunable_linears(model).items()}
    masks = semi_structured_24(model)
    for n, m in prunable_linears(model).items():
        assert is_24(m.weight)
        assert ((m.weight != 0).view(m.out_features, -1, 4).sum(-1) == 2).all()  # random weights: exactly 2
        assert torch.equal(m.weight, torch.where(masks[n], before[n], 0.0))
    assert sparsity_report(model)["sparsity"] == 0.5
    assert not is_24(torch.ones(2, 8))


def test_pruned_model_runs_and_masks_survive_training():
    model = tiny().train()
    masks = magnitude_prune(model, 0.6, scope="layer")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    handle = keep_masks(opt, model, masks)
    ids = torch.randint(0, 64, (2, 16))
    for _ in range(3):
        loss = model(ids).logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    modules = dict(model.named_modules())
    for name, keep in masks.items():
        w = modules[name].weight
        assert (w[~keep] == 0).all() and (w[keep] != 0).all()
    handle.remove()  # without the hook, AdamW's moments move the pruned weights again
    model(ids).logsumexp(-1).mean().backward()
    opt.step()
    assert sparsity_report(model)["sparsity"] < 0.6
    apply_masks(model, masks)
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, math.nan, "0.5"])
def test_bad_sparsity_changes_nothing(sparsity):
    model = tiny()
    before = snapshot(model)
    with pytest.raises(InvalidArgument, match=r"sparsity must be in \[0, 1\)"):
        magnitude_prune(model, sparsity)
    assert_unchanged(model, before)


def test_bad_scope_and_no_linears():
    model = tiny()
    before = snapshot(model)
    with pytest.raises(InvalidArgument, match="scope must be one of global, layer"):
        magnitude_prune(model, 0.5, scope="row")
    with pytest.raises(InvalidArgument, match="no linear layers matching 'nothing'"):
        magnitude_prune(model, 0.5, include="nothing")
    assert_unchanged(model, before)
    ssm = tiny()
    for blk in ssm.blocks.values():  # a model whose blocks hold no Linear at all
        blk.ffn.f = nn.Identity()
        blk.attn.f = nn.Identity()
    with pytest.raises(InvalidArgument, match="no linear layers in its blocks"):
        magnitude_prune(ssm, 0.5)
    with pytest.raises(InvalidArgument, match="has no `blocks`"):
        sparsity_report(nn.Linear(4, 4))


def test_24_needs_input_divisible_by_4_and_changes_nothing():
    model = tiny(d_ff=50)  # down projection: 50 inputs
    before = snapshot(model)
    with pytest.raises(InvalidArgument, match=r"divisible by 4.*blocks\.0\.ffn\.f\.down': 50"):
        semi_structured_24(model)
    assert_unchanged(model, before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error; this machine has CUDA")
def test_to_semi_structured_needs_cuda():
    model = tiny()
    semi_structured_24(model)
    before = snapshot(model)
    with pytest.raises(ScratchLMError, match="needs CUDA"):
        to_semi_structured(model)
    assert_unchanged(model, before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's 2:4 sparse kernels need an NVIDIA GPU")
def test_to_semi_structured_cuda_matches_dense():
    model = tiny(d_model=128, d_ff=256, n_heads=4, n_kv_heads=4).to("cuda", torch.float16)
    semi_structured_24(model)
    ids = torch.randint(0, 64, (4, 32), device="cuda")
    dense = model(ids)
    to_semi_structured(model)
    sparse = model(ids)
    assert (sparse - dense).abs().max() < 1e-2
