"""Losses: z-loss against a direct computation, lm_loss = cross-entropy + coef * z-loss, the fused loss = the
plain one, build_loss picks the LossFn of a config."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchlm.config import from_dict
from scratchlm.errors import ScratchLMError
from scratchlm.train.config import TrainConfig
from scratchlm.train.losses import LOSSES, FusedLMLoss, LMLoss, build_loss, fused_lm_loss, lm_loss, z_loss


def logits_targets(seed: int = 0, B: int = 2, T: int = 5, V: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(B, T, V, generator=g), torch.randint(0, V, (B, T), generator=g)


def test_z_loss_matches_direct_computation():
    logits, _ = logits_targets()
    direct = torch.log(torch.exp(logits.double()).sum(-1)).square().mean()
    torch.testing.assert_close(z_loss(logits).double(), direct, atol=1e-6, rtol=1e-6)


def test_z_loss_is_safe_for_large_logits_and_bf16():
    logits, _ = logits_targets()
    big = logits + 1000.0  # exp would overflow; logsumexp shifts by the max
    direct = (1000.0 + torch.log(torch.exp(logits.double()).sum(-1))).square().mean()
    torch.testing.assert_close(z_loss(big).double(), direct, rtol=1e-6, atol=0)
    assert z_loss(logits.bfloat16()).dtype == torch.float32


def test_z_loss_mask():
    logits, _ = logits_targets()
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :3] = True
    torch.testing.assert_close(z_loss(logits, mask), z_loss(logits[0, :3]))


def test_lm_loss_parts_and_gradient():
    logits, targets = logits_targets()
    targets[1, 4] = -100  # ignored
    logits.requires_grad_(True)
    total, parts = lm_loss(logits, targets, z_loss_coef=1e-2)
    ce = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=-100)
    keep = targets != -100
    torch.testing.assert_close(parts["ce"], ce.detach())
    torch.testing.assert_close(parts["z_loss"], z_loss(logits[keep]).detach())
    torch.testing.assert_close(total, ce + 1e-2 * z_loss(logits[keep]))
    assert not parts["ce"].requires_grad
    total.backward()
    assert logits.grad is not None and logits.grad[1, 4].abs().sum() == 0  # ignored position: no gradient


def test_lm_loss_without_z_loss_is_cross_entropy():
    logits, targets = logits_targets()
    total, parts = lm_loss(logits, targets)
    assert set(parts) == {"ce"}
    torch.testing.assert_close(total, F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)))
    assert LOSSES["lm"] is lm_loss and LOSSES["z_loss"] is z_loss


def test_build_loss_chooses_once_from_the_config():
    plain = build_loss(from_dict(TrainConfig, {"optim": {"z_loss": 1e-4}}))
    fused = build_loss(from_dict(TrainConfig, {"model": {"fused_loss": True}}))
    assert plain == LMLoss(z_loss_coef=1e-4) and plain.needs == "logits"
    assert fused == FusedLMLoss() and fused.needs == "hidden"
    with pytest.raises(ScratchLMError, match="unknown loss 'dpo'"):
        build_loss(TrainConfig(), "dpo")


def test_fused_lm_loss_equals_lm_loss_on_the_head_logits():
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(2, 5, 8, generator=g, requires_grad=True), torch.randn(11, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    targets[0, 0] = -100
    fused, parts = fused_lm_loss(h, w, targets)
    plain, _ = lm_loss(h @ w.T, targets)
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(parts["ce"], plain.detach())
    grads = torch.autograd.grad(fused, (h, w))
    for a, b in zip(grads, torch.autograd.grad(plain, (h, w))):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert LOSSES["fused_lm"] is fused_lm_loss
