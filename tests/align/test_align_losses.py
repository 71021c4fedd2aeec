"""SFT and preference losses on hand-computed cases."""

import math

import pytest
import torch

from scratchlm.align.losses import preference_loss, sequence_log_prob, sft_loss, sft_microbatch_train_step
from scratchlm.errors import ScratchLMError


def logsig(x):
    return -math.log1p(math.exp(-x))


def test_sft_loss_per_token_and_constant():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    m = torch.tensor([[False, True, True], [True, False, False]])
    assert sft_loss(lp, m).item() == pytest.approx((2 + 3 + 4) / 3)
    # sum over the mask / constant, averaged over the 2 rows
    assert sft_loss(lp, m, normalize_constant=10.0).item() == pytest.approx(9 / 10 / 2)


def test_sft_microbatch_step_scales_by_accumulation_and_calls_backward():
    lp = torch.tensor([[-1.0, -3.0]], requires_grad=True)
    m = torch.tensor([[True, True]])
    loss, meta = sft_microbatch_train_step(lp, m, gradient_accumulation_steps=4)
    assert loss.item() == pytest.approx(2.0 / 4)
    assert meta["nll"].item() == pytest.approx(2.0) and meta["tokens"].item() == 2
    # d/dlp of -(mean)/4 = -1/(2*4) per token
    assert lp.grad.tolist() == [[-0.125, -0.125]]
    with pytest.raises(ScratchLMError):
        sft_microbatch_train_step(lp, m, 0)


def test_sequence_log_prob_sum_and_average():
    lp = torch.tensor([[-1.0, -2.0, -3.0]])
    m = torch.tensor([[False, True, True]])
    assert sequence_log_prob(lp, m).item() == -5.0
    assert sequence_log_prob(lp, m, average=True).item() == -2.5


def test_dpo_ipo_simpo_by_hand():
    pc, pr, rc, rr = torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.5])
    beta = 0.5
    h = (-10 + 11) - (-12 + 11.5)  # 1.5
    losses, meta = preference_loss(pc, pr, rc, rr, beta=beta, kind="dpo")
    assert losses.item() == pytest.approx(-logsig(beta * h))
    assert meta["rewards_chosen"].item() == pytest.approx(0.5) and meta["rewards_rejected"].item() == pytest.approx(
        -0.25
    )
    assert meta["margin"].item() == pytest.approx(0.75) and meta["accuracy"].item() == 1.0
    losses, _ = preference_loss(pc, pr, rc, rr, beta=beta, kind="ipo")
    assert losses.item() == pytest.approx((h - 1 / (2 * beta)) ** 2)
    losses, meta = preference_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, kind="simpo", gamma=0.5)
    assert losses.item() == pytest.approx(-logsig(2.0 * 1.0 - 0.5))
    # at the reference (policy == ref) DPO's loss is log 2 whatever beta
    losses, meta = preference_loss(rc, rr, rc, rr, beta=0.1)
    assert losses.item() == pytest.approx(math.log(2)) and meta["accuracy"].item() == 0.0


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = torch.tensor([-5.0], requires_grad=True), torch.tensor([-5.0], requires_grad=True)
    losses, _ = preference_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1)
    losses.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()
    assert pc.grad.item() == pytest.approx(-0.05)  # -beta * sigmoid(0)


def test_preference_bad_input():
    x = torch.zeros(1)
    with pytest.raises(ScratchLMError, match="reference"):
        preference_loss(x, x, kind="dpo")
    with pytest.raises(ScratchLMError, match="unknown preference loss"):
        preference_loss(x, x, x, x, kind="kto")
    with pytest.raises(ScratchLMError, match="beta"):
        preference_loss(x, x, x, x, beta=0)
