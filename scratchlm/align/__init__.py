"""Alignment: per-token log-probs of responses, pure loss functions and verifiers, over the shared train step.

    logprobs.py    tokenize_prompt_and_output, response_log_probs, token_entropy, masked_mean / masked_normalize
    losses.py      SFT (per token or a constant), preference losses: DPO, IPO, SimPO
    pg_losses.py   group-normalised rewards (GRPO), REINFORCE, GRPO-clip, k3 KL, PPO value head / GAE / value loss
    rewards.py     GSM8K / MMLU / math answer parsers and verifiers, R1 format reward, rewards by name
    data.py        JSONL with line-numbered errors, HH-RLHF dialogues, preference pairs with a chat template
    sft.py         SFT trainer: assistant-only targets, packed rows with per-document positions and masks
    dpo.py         DPO / IPO / SimPO trainer with a frozen reference (log-probs precomputed once)

Names are exported lazily (importing the package does not import torch).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "tokenize_prompt_and_output": "logprobs",
    "response_log_probs": "logprobs",
    "token_log_probs": "logprobs",
    "token_entropy": "logprobs",
    "masked_mean": "logprobs",
    "masked_normalize": "logprobs",
    "sft_loss": "losses",
    "sft_microbatch_train_step": "losses",
    "sequence_log_prob": "losses",
    "preference_loss": "losses",
    "compute_group_normalized_rewards": "pg_losses",
    "compute_policy_gradient_loss": "pg_losses",
    "compute_grpo_clip_loss": "pg_losses",
    "grpo_microbatch_train_step": "pg_losses",
    "kl_k3": "pg_losses",
    "compute_gae": "pg_losses",
    "ValueHead": "pg_losses",
    "reward_function": "rewards",
    "SFTConfig": "sft",
    "train_sft": "sft",
    "DPOConfig": "dpo",
    "train_dpo": "dpo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'scratchlm.align' has no attribute {name!r}")
    return getattr(importlib.import_module(f"scratchlm.align.{_EXPORTS[name]}"), name)
