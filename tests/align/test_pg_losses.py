"""Group-normalised rewards, policy-gradient losses, k3 KL and PPO's GAE / value loss on hand-computed cases."""

import math

import pytest
import torch

from scratchlm.align.pg_losses import (
    ValueHead,
    clipped_value_loss,
    compute_gae,
    compute_group_normalized_rewards,
    compute_grpo_clip_loss,
    compute_policy_gradient_loss,
    grpo_microbatch_train_step,
    kl_k3,
    token_rewards,
    whiten,
)
from scratchlm.errors import ScratchLMError


def exact(response, truth):
    return {"reward": float(response == truth)}


def test_group_normalized_rewards_by_hand():
    responses = ["1", "2", "1", "1", "x", "y", "z", "w"]
    truths = ["1"] * 4 + ["y"] * 4
    adv, raw, meta = compute_group_normalized_rewards(exact, responses, truths, group_size=4, normalize_by_std=False)
    assert raw.tolist() == [1, 0, 1, 1, 0, 1, 0, 0]
    assert adv.tolist() == pytest.approx([0.25, -0.75, 0.25, 0.25, -0.25, 0.75, -0.25, -0.25])
    adv, _, meta = compute_group_normalized_rewards(exact, responses, truths, group_size=4, advantage_eps=0.0)
    std = torch.tensor([1.0, 0, 1, 1]).std().item()  # unbiased, 0.5
    assert adv[:4].tolist() == pytest.approx([0.25 / std, -0.75 / std, 0.25 / std, 0.25 / std])
    assert meta["reward_mean"] == pytest.approx(0.5) and meta["reward_errors"] == 0


def test_group_with_equal_rewards_has_zero_advantage_and_bad_rewards_score_zero():
    calls = iter([1.0, float("nan"), RuntimeError("boom"), 1.0])

    def flaky(response, truth):
        v = next(calls)
        if isinstance(v, Exception):
            raise v
        return v

    adv, raw, meta = compute_group_normalized_rewards(flaky, list("abcd"), list("abcd"), group_size=2)
    assert raw.tolist() == [1.0, 0.0, 0.0, 1.0] and meta["reward_errors"] == 2
    adv, _, meta = compute_group_normalized_rewards(lambda r, t: 1.0, list("ab"), list("ab"), group_size=2)
    assert adv.tolist() == [0.0, 0.0] and meta["groups_all_same"] == 1.0
    with pytest.raises(ScratchLMError, match="groups of 3"):
        compute_group_normalized_rewards(exact, list("abcd"), list("abcd"), group_size=3)


def test_policy_gradient_losses():
    lp = torch.tensor([[-1.0, -2.0]])
    r = torch.tensor([[2.0]])
    loss, _ = compute_policy_gradient_loss(lp, "no_baseline", raw_rewards=r)
    assert loss.tolist() == [[2.0, 4.0]]
    loss, _ = compute_policy_gradient_loss(lp, "reinforce_with_baseline", advantages=-r)
    assert loss.tolist() == [[-2.0, -4.0]]
    with pytest.raises(ScratchLMError, match="needs advantages"):
        compute_policy_gradient_loss(lp, "grpo_clip", raw_rewards=r)
    with pytest.raises(ScratchLMError, match="unknown loss_type"):
        compute_policy_gradient_loss(lp, "ppo", raw_rewards=r)


def test_grpo_clip_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.9, 0.5]]))  # ratios 1.5, 0.9, 0.5
    adv = torch.tensor([[1.0]])
    loss, meta = compute_grpo_clip_loss(adv, new, old, cliprange=0.2)
    assert loss[0].tolist() == pytest.approx([-1.2, -0.9, -0.5])  # min(r A, clip(r) A) with A > 0
    assert meta["clipped"].tolist() == [[True, False, False]]
    loss, meta = compute_grpo_clip_loss(-adv, new, old, cliprange=0.2)
    assert loss[0].tolist() == pytest.approx([1.5, 0.9, 0.8])  # A < 0: the larger ratio term
    assert meta["clipped"].tolist() == [[False, False, True]]


def test_grpo_microbatch_step_gradient_matches_manual():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([[1.0], [-2.0]])
    loss, meta = grpo_microbatch_train_step(
        lp, mask, 2, "grpo_clip", advantages=adv, old_log_probs=lp.detach(), cliprange=0.2
    )
    # at ratio 1: per-token loss -A; per sequence mean over the mask; batch mean; / 2 accumulation steps
    assert loss.item() == pytest.approx(((-1.0) + 2.0) / 2 / 2)
    # d loss / d lp = -A * ratio / len / B / accum
    want = torch.tensor([[-1 / 2, -1 / 2, 0.0], [2 / 3, 2 / 3, 2 / 3]]) / 2 / 2
    torch.testing.assert_close(lp.grad, want)
    assert meta["clip_fraction"].item() == 0.0
    lp.grad = None
    loss, _ = grpo_microbatch_train_step(
        lp, mask, 1, "reinforce_with_baseline", advantages=adv, length_normalization="constant", normalize_constant=4
    )
    assert loss.item() == pytest.approx(((1 * 3) + (-2 * 3)) / 4 / 2)


def test_kl_k3_is_nonnegative_and_unbiased():
    assert kl_k3(torch.tensor([-1.0]), torch.tensor([-1.0])).item() == 0.0
    # E_{x~p}[k3] = KL(p || q) for p, q over 3 outcomes
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    k3 = kl_k3(p.log(), q.log())
    assert (k3 >= 0).all()
    assert (p * k3).sum().item() == pytest.approx((p * (p / q).log()).sum().item(), rel=1e-5)


def test_gae_matches_the_recurrence_and_montecarlo():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.1, 9.0]])  # position 3 is padding (off the mask)
    mask = torch.tensor([[True, True, True, False]])
    gamma, lam = 0.9, 0.8
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    d2 = 1.0 - 0.1
    d1 = 0 + gamma * 0.1 - 0.2
    d0 = 0 + gamma * 0.2 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2, 0.0])
    assert ret[0, :3].tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, a2 + 0.1])
    # lam = 1, gamma = 1: advantage = Monte-Carlo return - value
    adv, _ = compute_gae(rewards, values, mask, 1.0, 1.0)
    assert adv[0, :3].tolist() == pytest.approx([1 - 0.5, 1 - 0.2, 1 - 0.1])


def test_token_rewards_value_loss_whiten_value_head():
    mask = torch.tensor([[False, True, True, False], [False, False, False, False]])
    assert token_rewards(torch.tensor([3.0, 5.0]), mask).tolist() == [[0, 0, 3.0, 0], [0, 0, 0, 0]]
    v, old, ret = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    m = torch.tensor([[True, True]])
    # token 0: max((1-0)^2, (0.2-0)^2) = 1; token 1: max(4, 4) = 4
    assert clipped_value_loss(v, old, ret, m, 0.2).item() == pytest.approx(0.5 * (1 + 4) / 2)
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    w = whiten(x, torch.tensor([[True, True, True, False]]))
    assert w[0, :3].mean().item() == pytest.approx(0.0, abs=1e-6) and w[0, 3].item() == 0.0
    head = ValueHead(8)
    assert head(torch.randn(2, 3, 8)).abs().sum().item() == 0.0  # zero-initialised
    assert math.isfinite(head(torch.randn(2, 3, 8)).sum().item())
