"""Supervised fine-tuning and preference losses: pure functions of per-token log-probabilities.

    lp = response_log_probs(policy, input_ids, labels)["log_probs"]               # (B, T)
    loss, meta = sft_microbatch_train_step(lp, response_mask, grad_accum_steps=4)  # calls backward

    seq = sequence_log_prob(lp, response_mask)                                    # (B,) log p(response | prompt)
    losses, meta = preference_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta=0.1, kind="dpo")

Preference losses, per pair, with h = (pi_c - ref_c) - (pi_r - ref_r) (log-ratio of chosen minus rejected):
    dpo     -log sigmoid(beta h)                       (Rafailov et al. 2023, eq. 7)
    ipo     (h - 1 / (2 beta))^2                       (Azar et al. 2023: regresses h to a fixed margin)
    simpo   -log sigmoid(beta (avg_c - avg_r) - gamma) (Meng et al. 2024: length-averaged log-probs, no
                                                         reference model, a target margin gamma)
The implicit reward of a response is beta (pi - ref); "reward accuracy" is how often chosen's is larger.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from scratchlm.align.logprobs import masked_mean, masked_normalize
from scratchlm.errors import ScratchLMError

PreferenceKind = Literal["dpo", "ipo", "simpo"]
PREFERENCE_KINDS = ("dpo", "ipo", "simpo")


def sft_loss(policy_log_probs: Tensor, response_mask: Tensor, normalize_constant: float | None = None) -> Tensor:
    """Negative log-likelihood of the response tokens: the mean over response tokens (normalize_constant None),
    or their sum divided by `normalize_constant` (a fixed budget, so long and short responses weigh per token
    the same across batches). policy_log_probs, response_mask (B, T)."""
    if normalize_constant is None:
        return -masked_mean(policy_log_probs, response_mask)
    return -masked_normalize(policy_log_probs, response_mask, normalize_constant) / policy_log_probs.shape[0]


def sft_microbatch_train_step(
    policy_log_probs: Tensor,
    response_mask: Tensor,
    gradient_accumulation_steps: int,
    normalize_constant: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One micro-batch of SFT: the loss divided by the accumulation steps, backward called on it.
    Returns (that scaled loss, detached, and {"nll": unscaled loss, "tokens": response tokens})."""
    if gradient_accumulation_steps < 1:
        raise ScratchLMError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
    nll = sft_loss(policy_log_probs, response_mask, normalize_constant)
    loss = nll / gradient_accumulation_steps
    loss.backward()
    return loss.detach(), {"nll": nll.detach(), "tokens": response_mask.sum().detach()}


def sequence_log_prob(log_probs: Tensor, mask: Tensor, average: bool = False) -> Tensor:
    """(B,) sum (or mean, `average`) of per-token log-probs over the response: log p(response | prompt)."""
    return masked_mean(log_probs, mask, dim=-1) if average else (log_probs * mask.to(log_probs.dtype)).sum(-1)


def preference_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor | None = None,
    ref_rejected: Tensor | None = None,
    beta: float = 0.1,
    kind: PreferenceKind = "dpo",
    gamma: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-pair losses (B,) and metrics from sequence log-probs (B,) of chosen and rejected responses.

    dpo / ipo need the frozen reference's log-probs; simpo takes none (pass length-averaged log-probs,
    `sequence_log_prob(..., average=True)`). Metrics (detached): chosen / rejected implicit rewards
    (beta x log-ratio; simpo: beta x average log-prob), their margin, and reward accuracy (chosen > rejected)."""
    if kind not in PREFERENCE_KINDS:
        raise ScratchLMError(f"unknown preference loss {kind!r}: expected one of {', '.join(PREFERENCE_KINDS)}")
    if not beta > 0:
        raise ScratchLMError(f"beta must be > 0, got {beta}")
    if kind == "simpo":
        chosen, rejected = beta * policy_chosen, beta * policy_rejected
        losses = -F.logsigmoid(chosen - rejected - gamma)
    else:
        if ref_chosen is None or ref_rejected is None:
            raise ScratchLMError(f"{kind} needs the reference model's log-probs of chosen and rejected")
        chosen, rejected = beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)
        h = (chosen - rejected) / beta
        losses = -F.logsigmoid(beta * h) if kind == "dpo" else (h - 1 / (2 * beta)) ** 2
    with torch.no_grad():
        meta = {
            "rewards_chosen": chosen.detach(),
            "rewards_rejected": rejected.detach(),
            "margin": (chosen - rejected).detach(),
            "accuracy": (chosen > rejected).float(),
        }
    return losses, meta
