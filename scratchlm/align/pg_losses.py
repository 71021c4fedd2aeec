"""Policy-gradient losses for learning from verifiers: group-normalised rewards (GRPO), REINFORCE, the clipped
ratio objective, a KL penalty, and PPO's value head, GAE and clipped value loss. Pure functions of tensors.

    adv, raw, meta = compute_group_normalized_rewards(reward_fn, responses, truths, group_size=8)
    per_token, meta = compute_policy_gradient_loss(policy_lp, "grpo_clip", advantages=adv[:, None],
                                                   old_log_probs=old_lp, cliprange=0.2)
    loss, meta = grpo_microbatch_train_step(policy_lp, response_mask, grad_accum_steps, "grpo_clip", ...)

Shapes: B rollouts (= prompts x group size), T response positions. Per-token losses are (B, T); advantages
and raw rewards (B, 1) broadcast over the tokens of their rollout.

GRPO (Shao et al. 2024) drops PPO's value function: the baseline of a rollout is the mean reward of the G
rollouts of its prompt, optionally divided by their standard deviation (Dr. GRPO, Liu et al. 2025, argues
against the division and against per-response length normalisation; both are switches here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from scratchlm.align.logprobs import masked_mean, masked_normalize
from scratchlm.errors import ScratchLMError

LossType = Literal["no_baseline", "reinforce_with_baseline", "grpo_clip"]
LOSS_TYPES = ("no_baseline", "reinforce_with_baseline", "grpo_clip")


def compute_group_normalized_rewards(
    reward_fn: Callable[[str, str], dict | float],
    rollout_responses: Sequence[str],
    repeated_ground_truths: Sequence[str],
    group_size: int,
    advantage_eps: float = 1e-6,
    normalize_by_std: bool = True,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """(advantages (B,), raw rewards (B,), metadata) for B = n_prompts x group_size rollouts, grouped by
    consecutive runs of `group_size`. advantage = reward - group mean (/ (group std + eps)).

    reward_fn(response, ground_truth) returns a float or a dict with "reward" (and optionally "format_reward",
    "answer_reward"). A reward function that raises or returns a non-finite value gives reward 0 and is
    counted in meta["reward_errors"]: one bad sample never stops a run."""
    n = len(rollout_responses)
    if n != len(repeated_ground_truths):
        raise ScratchLMError(f"{n} responses but {len(repeated_ground_truths)} ground truths")
    if group_size < 1 or n % group_size:
        raise ScratchLMError(f"{n} rollouts do not split into groups of {group_size}")
    rewards, errors = [], 0
    for response, truth in zip(rollout_responses, repeated_ground_truths, strict=True):
        r, ok = safe_reward(reward_fn, response, truth)
        rewards.append(r)
        errors += not ok
    raw = torch.tensor(rewards, dtype=torch.float32)
    groups = raw.view(-1, group_size)  # (n_prompts, G)
    adv = groups - groups.mean(dim=1, keepdim=True)
    if normalize_by_std:
        adv = adv / (groups.std(dim=1, keepdim=True) + advantage_eps)  # unbiased std (as torch and TRL)
    meta = {
        "reward_mean": raw.mean().item(),
        "reward_std": raw.std().item() if n > 1 else 0.0,
        "reward_max": raw.max().item(),
        "reward_min": raw.min().item(),
        "groups_all_same": (groups.std(dim=1) == 0).float().mean().item() if group_size > 1 else 1.0,
        "reward_errors": errors,
    }
    return adv.flatten(), raw, meta


def safe_reward(reward_fn, response: str, truth) -> tuple[float, bool]:
    """(reward, True), or (0.0, False) when the function raises or its reward is not a finite number."""
    try:
        out = reward_fn(response, truth)
        r = float(out["reward"] if isinstance(out, dict) else out)
    except Exception:  # noqa: BLE001 - a user reward function may fail in any way; the sample scores 0
        return 0.0, False
    return (r, True) if math.isfinite(r) else (0.0, False)


def compute_naive_policy_gradient_loss(raw_rewards_or_advantages: Tensor, policy_log_probs: Tensor) -> Tensor:
    """-A log pi per token (B, T): REINFORCE's surrogate, whose gradient is the policy gradient estimate."""
    return -raw_rewards_or_advantages * policy_log_probs


def compute_grpo_clip_loss(
    advantages: Tensor, policy_log_probs: Tensor, old_log_probs: Tensor, cliprange: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped objective per token (B, T): -min(r A, clip(r, 1 - eps, 1 + eps) A), r = pi / pi_old.
    meta["clipped"] marks the tokens where the clipped term was the smaller one (no gradient there)."""
    ratio = torch.exp(policy_log_probs - old_log_probs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - cliprange, 1 + cliprange) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, {"clipped": (clipped < unclipped).detach(), "ratio": ratio.detach()}


def kl_k3(policy_log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi: k3 = exp(ref - pi) - (ref - pi) - 1 >= 0,
    unbiased and low-variance (Schulman 2020, "Approximating KL divergence")."""
    d = ref_log_probs - policy_log_probs
    return torch.exp(d) - d - 1


def compute_policy_gradient_loss(
    policy_log_probs: Tensor,
    loss_type: LossType,
    raw_rewards: Tensor | None = None,
    advantages: Tensor | None = None,
    old_log_probs: Tensor | None = None,
    cliprange: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token loss (B, T) and metadata for `loss_type`: "no_baseline" (raw rewards), "reinforce_with_baseline"
    (advantages), "grpo_clip" (advantages, old log-probs, cliprange)."""
    if loss_type == "no_baseline":
        if raw_rewards is None:
            raise ScratchLMError("no_baseline needs raw_rewards")
        return compute_naive_policy_gradient_loss(raw_rewards, policy_log_probs), {}
    if loss_type == "reinforce_with_baseline":
        if advantages is None:
            raise ScratchLMError("reinforce_with_baseline needs advantages")
        return compute_naive_policy_gradient_loss(advantages, policy_log_probs), {}
    if loss_type == "grpo_clip":
        if advantages is None or old_log_probs is None or cliprange is None:
            raise ScratchLMError("grpo_clip needs advantages, old_log_probs and cliprange")
        return compute_grpo_clip_loss(advantages, policy_log_probs, old_log_probs, cliprange)
    raise ScratchLMError(f"unknown loss_type {loss_type!r}: expected one of {', '.join(LOSS_TYPES)}")


def grpo_microbatch_train_step(
    policy_log_probs: Tensor,
    response_mask: Tensor,
    gradient_accumulation_steps: int,
    loss_type: LossType,
    raw_rewards: Tensor | None = None,
    advantages: Tensor | None = None,
    old_log_probs: Tensor | None = None,
    cliprange: float | None = None,
    length_normalization: Literal["mean", "constant"] = "mean",
    normalize_constant: float | None = None,
    ref_log_probs: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One micro-batch of a policy-gradient step: per-token loss (+ kl_coef x k3 KL to the reference), reduced
    per response (the mean over its tokens, "mean"; or the sum over a fixed `normalize_constant`, "constant":
    Dr. GRPO), averaged over the batch, divided by the accumulation steps, backward called.
    Returns (the scaled loss, detached; metadata incl. clip fraction and mean KL)."""
    per_token, meta = compute_policy_gradient_loss(
        policy_log_probs, loss_type, raw_rewards, advantages, old_log_probs, cliprange
    )
    if kl_coef:
        if ref_log_probs is None:
            raise ScratchLMError("kl_coef > 0 needs ref_log_probs")
        kl = kl_k3(policy_log_probs, ref_log_probs)
        per_token = per_token + kl_coef * kl
        meta["kl"] = masked_mean(kl.detach(), response_mask)
    if length_normalization == "mean":
        per_seq = masked_mean(per_token, response_mask, dim=-1)
    elif length_normalization == "constant":
        if normalize_constant is None:
            raise ScratchLMError('length_normalization="constant" needs normalize_constant (e.g. the max length)')
        per_seq = masked_normalize(per_token, response_mask, normalize_constant, dim=-1)
    else:
        raise ScratchLMError(f"length_normalization must be 'mean' or 'constant', got {length_normalization!r}")
    loss = per_seq.mean() / gradient_accumulation_steps
    loss.backward()
    if "clipped" in meta:
        meta["clip_fraction"] = masked_mean(meta["clipped"].float(), response_mask)
    return loss.detach(), meta


# ------------------------------------------------------------------------------------------------ PPO


class ValueHead(nn.Module):
    """A scalar value per position from the policy's final hidden states (B, T, D) -> (B, T); zero-initialised
    so the first advantages are the plain returns."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.proj(hidden.float()).squeeze(-1)


def token_rewards(sequence_rewards: Tensor, response_mask: Tensor) -> Tensor:
    """(B, T) rewards with each rollout's sequence reward (B,) on its last response token, 0 elsewhere."""
    mask = response_mask.to(torch.long)
    T = mask.shape[1]
    last = T - 1 - torch.flip(mask, dims=[1]).argmax(dim=1)  # index of the last True per row
    out = torch.zeros(mask.shape, dtype=torch.float32, device=sequence_rewards.device)
    has = mask.any(dim=1)
    out[has, last[has]] = sequence_rewards[has].float()
    return out


def compute_gae(
    rewards: Tensor, values: Tensor, response_mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over the response tokens of each row:
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, V after the last response token
    = 0 (the episode ends). Returns (advantages, returns = advantages + values), both (B, T), 0 off the mask."""
    mask = response_mask.to(torch.float32)
    rewards, values = rewards.float() * mask, values.float().detach() * mask
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(B, device=rewards.device)
    next_adv = torch.zeros(B, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m
        # positions off the mask (padding after the response) pass the next values through unchanged
        next_value = torch.where(m > 0, values[:, t], next_value)
        next_adv = torch.where(m > 0, a, next_adv)
    return adv, (adv + values) * mask


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, response_mask: Tensor, cliprange: float
) -> Tensor:
    """PPO's value loss: 0.5 max((V - R)^2, (clip(V, V_old +- eps) - R)^2), mean over response tokens."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange, cliprange)
    loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return masked_mean(loss, response_mask)


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """x normalised to mean 0, std 1 over the masked positions (PPO's advantage whitening)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask.to(x.dtype)
