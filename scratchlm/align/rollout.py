"""Rollouts for RL through the inference engine: G samples per prompt with the policy's current weights, and
the training batch built from the very token ids the engine sampled.

    sampler = RolloutSampler(policy, chat, num_blocks=512)            # the engine reads `policy` in place
    ro = sampler.sample(prompt_ids, group_size=8, max_tokens=128, temperature=1.0, seed=step)
    batch = rollout_batch(ro.prompt_ids, ro.response_ids, pad_id)     # input_ids, labels, response_mask
    lp = response_log_probs(policy, batch["input_ids"], batch["labels"])["log_probs"]
    # lp on the response positions == ro.log_probs (tested): the old policy's log-probs come for free

Weights: the engine runs the same module the optimizer updates, so no copy is made; its prefix cache holds
KV computed by older weights, so `sample` drops it first. Log-probs: the engine reports the raw model's
log-probabilities (temperature 1); a rollout sampled at another temperature is scored at temperature 1
by the trainer too, which keeps the two consistent. Responses are re-scored from token ids, never
re-tokenised from text (a decode/encode round trip can change the tokens, and then the log-probs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scratchlm.errors import ScratchLMError


@dataclass
class Rollouts:
    """B = prompts x group_size samples, grouped by prompt (the G samples of prompt i are rows iG..iG+G-1)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    texts: list[str]
    log_probs: list[list[float]]  # the engine's log-prob of each sampled token (temperature 1)
    finish_reasons: list[str | None]


def rollout_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int = 0) -> dict:
    """{"input_ids", "labels", "response_mask"} (B, L - 1) from token ids: prompt + response right-padded."""
    if len(prompt_ids) != len(response_ids) or not prompt_ids:
        raise ScratchLMError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    seqs = [p + r for p, r in zip(prompt_ids, response_ids, strict=True)]
    L = max(2, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.bool)
    for b, (p, s) in enumerate(zip(prompt_ids, seqs, strict=True)):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, len(p) : len(s)] = True
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "response_mask": mask[:, 1:]}


def engine_log_probs_tensor(rollouts: Rollouts, shape: tuple[int, int]) -> torch.Tensor:
    """The engine's log-probs laid out like `rollout_batch`'s labels (B, L - 1), 0 off the response."""
    out = torch.zeros(shape, dtype=torch.float32)
    for b, (p, lps) in enumerate(zip(rollouts.prompt_ids, rollouts.log_probs, strict=True)):
        start = len(p) - 1  # label position of the first response token
        out[b, start : start + len(lps)] = torch.tensor(lps, dtype=torch.float32)
    return out


class RolloutSampler:
    """An engine over `policy` (shared, not copied) that samples groups of responses per prompt."""

    def __init__(self, policy: nn.Module, tokenizer=None, **engine_config):
        from scratchlm.infer.engine import LLM

        self.policy = policy
        self.llm = LLM(policy, tokenizer, **engine_config)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[list[int]],
        group_size: int,
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> Rollouts:
        from scratchlm.infer.sampling import SamplingParams

        if group_size < 1:
            raise ScratchLMError(f"group_size must be >= 1, got {group_size}")
        was_training = self.policy.training
        self.policy.eval()
        self.llm.engine.reset_prefix_cache()  # KV cached before the last optimizer step is stale
        params = [
            SamplingParams(
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                n=group_size,
                seed=None if seed is None else seed * 1_000_003 + i,
                stop=stop or [],
            )  # fmt: skip
            for i in range(len(prompts))
        ]
        try:
            outs = self.llm.generate([list(p) for p in prompts], params)
        finally:
            self.policy.train(was_training)
        ro = Rollouts([], [], [], [], [])
        for p, out in zip(prompts, outs, strict=True):
            for c in sorted(out.outputs, key=lambda c: c.index):
                ro.prompt_ids.append(list(p))
                ro.response_ids.append(list(c.token_ids))
                ro.texts.append(c.text)
                ro.log_probs.append(list(c.logprobs))
                ro.finish_reasons.append(c.finish_reason)
        return ro
