"""PPO from a verifier: the policy plus a value head on its final hidden states, GAE advantages, clipped policy
and value losses; rollouts through the engine as in GRPO (grpo.py), whose config and data it shares.

    scratchlm align ppo --model smollm2-135m-instruct --prompts train.jsonl --out runs/ppo --set reward=gsm8k
    summary = train_ppo(PPOConfig(model=..., prompts="train.jsonl", out_dir="runs/ppo", group_size=1))

Per step: rollouts; the sequence reward on each response's last token (`token_rewards`), minus
kl_coef x the per-token log-ratio to the initial policy when kl_coef > 0 (InstructGPT's shaped reward);
values V_t of the sampling-time policy + head; GAE(gamma, lam) -> advantages (whitened) and returns;
then `epochs_per_batch` passes of optimizer steps on clipped policy loss + vf_coef x clipped value loss
(pg_losses.py). The value head is a `ValueHead` (zero-initialised); it lives in OUT/checkpoint.pt; OUT/model
holds the policy only (what serve / eval load).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from scratchlm.align.grpo import GRPOConfig
from scratchlm.align.logprobs import masked_mean, token_entropy, token_log_probs
from scratchlm.align.pg_losses import (
    ValueHead,
    clipped_value_loss,
    compute_gae,
    compute_grpo_clip_loss,
    safe_reward,
    token_rewards,
    whiten,
)
from scratchlm.errors import ScratchLMError

log = logging.getLogger(__name__)


@dataclass
class PPOConfig(GRPOConfig):
    out_dir: str = "runs/ppo"
    group_size: int = 1  # samples per prompt (PPO needs no group: the value head is the baseline)
    prompts_per_step: int = 32
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.1
    value_cliprange: float = 0.2
    value_lr: float = 1e-3  # the fresh head learns faster than the pretrained policy
    whiten_advantages: bool = True

    def validate(self) -> None:
        if self.loss_type != "grpo_clip":
            raise ScratchLMError("ppo uses the clipped objective: loss_type must be 'grpo_clip'")
        GRPOConfig.validate(replace(self, loss_type="no_baseline"))  # the batch checks; a group of 1 is fine


class PolicyWithValue(nn.Module):
    """The policy and a value head over its final hidden states; forward(x, output="hidden") as the model's."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_head = ValueHead(policy.config.d_model)

    def forward(self, input_ids: Tensor, output: str = "hidden") -> Tensor:
        return self.policy(input_ids, output="hidden")  # (B, T, D)


@dataclass
class PPOTargets:
    labels: Tensor  # (B, T)
    mask: Tensor  # (B, T)
    advantages: Tensor  # (B, T)
    returns: Tensor  # (B, T)
    old_log_probs: Tensor  # (B, T)
    old_values: Tensor  # (B, T)

    def to(self, device) -> PPOTargets:
        return PPOTargets(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


@dataclass
class PPOLoss:
    """A LossFn for `train_step` over a `PolicyWithValue`: clipped policy loss (token mean per response, mean
    over responses) + vf_coef x clipped value loss."""

    cliprange: float
    value_cliprange: float
    vf_coef: float
    needs: ClassVar[str] = "hidden"
    last: dict = field(default_factory=dict)

    def __call__(self, hidden: Tensor, y: PPOTargets, model: PolicyWithValue):
        logits = model.policy.head(hidden)  # (B, T, V)
        values = model.value_head(hidden)  # (B, T)
        lp = token_log_probs(logits, y.labels)
        per_token, meta = compute_grpo_clip_loss(y.advantages, lp, y.old_log_probs, self.cliprange)
        pg = masked_mean(per_token, y.mask, dim=-1).mean()
        vf = clipped_value_loss(values, y.old_values, y.returns, y.mask, self.value_cliprange)
        with torch.no_grad():
            parts = {"pg_loss": pg.detach(), "value_loss": vf.detach(),
                     "clip_fraction": masked_mean(meta["clipped"].float(), y.mask),
                     "entropy": masked_mean(token_entropy(logits), y.mask)}  # fmt: skip
        return pg + self.vf_coef * vf, parts


def train_ppo(cfg: PPOConfig, resume: bool = False, stop_after: int | None = None, model_and_chat=None) -> dict:
    """Run PPO per `cfg`; returns the summary (also OUT/summary.json); resume / stop_after as `train_grpo`."""
    from scratchlm.align.rl_run import after_step, begin, finish, sample_step, start_run
    from scratchlm.align.rollout import RolloutSampler, engine_log_probs_tensor, rollout_batch
    from scratchlm.train.step import train_step

    run = start_run(cfg, resume, model_and_chat)
    ckpt, device, reward_fn, pad = run.ckpt, run.device, run.reward_fn, run.pad
    model, chat = run.model, run.chat
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.kl_coef else None
    pv = PolicyWithValue(model).to(device)
    optimizer = torch.optim.AdamW(
        [{"params": list(model.parameters()), "lr": cfg.lr},
         {"params": list(pv.value_head.parameters()), "lr": cfg.value_lr}],
        betas=(0.9, 0.99), weight_decay=cfg.weight_decay,
    )  # fmt: skip
    loss_fn = PPOLoss(cfg.cliprange, cfg.value_cliprange, cfg.vf_coef)
    rollouts_per_step = cfg.prompts_per_step * cfg.group_size
    tb = cfg.train_batch or rollouts_per_step
    sampler = RolloutSampler(model, chat, kv_cache_mb=cfg.kv_cache_mb, max_num_seqs=max(64, rollouts_per_step))
    restore = {"model": pv, "ref_model": ref_model, "optimizer": optimizer}
    start, opt_step, evals, metrics = begin(run, cfg, sampler, restore, resume)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    for step in range(start, end):
        t0 = time.perf_counter()
        tasks, ro = sample_step(run, sampler, cfg, step, cfg.prompts_per_step)
        rewards, errors = [], 0
        for i, text in enumerate(ro.texts):
            r, ok = safe_reward(reward_fn, text, tasks[i // cfg.group_size].answer)
            rewards.append(r)
            errors += not ok
        b = rollout_batch(ro.prompt_ids, ro.response_ids, pad)
        x, labels, mask = b["input_ids"].to(device), b["labels"].to(device), b["response_mask"].to(device)
        old_lp = engine_log_probs_tensor(ro, labels.shape).to(device)  # the sampling policy's
        with torch.no_grad():
            old_values = pv.value_head(pv(x)) * mask
            r_tok = token_rewards(torch.tensor(rewards, device=device), mask)
            kl_mean = 0.0
            if ref_model is not None:
                log_ratio = (old_lp - token_log_probs(ref_model(x, output="logits"), labels)) * mask
                r_tok = r_tok - cfg.kl_coef * log_ratio
                kl_mean = float(masked_mean(log_ratio, mask))
        adv, returns = compute_gae(r_tok, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            adv = whiten(adv, mask)
        parts_all, losses = {}, []
        pv.train()
        for epoch in range(cfg.epochs_per_batch):
            order = list(range(rollouts_per_step))
            random.Random(cfg.seed + 31 * step + epoch).shuffle(order)
            for s in range(0, rollouts_per_step, tb):
                idx = order[s : s + tb]
                micro = []
                for k in range(0, len(idx), cfg.micro_batch):
                    j = torch.tensor(idx[k : k + cfg.micro_batch])
                    micro.append((x[j], PPOTargets(labels[j], mask[j], adv[j], returns[j], old_lp[j], old_values[j])))
                r = train_step(pv, micro, loss_fn, optimizer, None, step=opt_step, precision=cfg.precision,
                               grad_clip=cfg.grad_clip)  # fmt: skip
                opt_step += 1
                if not r.finite:
                    raise ScratchLMError(f"non-finite PPO loss at step {step + 1}: lower lr")
                losses.append(r.loss)
                for k, v in r.parts.items():
                    parts_all.setdefault(k, []).append(float(v))
        pv.eval()
        n = len(rewards)
        rec = {"kind": "train", "step": step + 1, "loss": losses[0], "reward": sum(rewards) / n,
               "accuracy": sum(r >= 1 for r in rewards) / n, "reward_errors": errors,
               "response_len": sum(map(len, ro.response_ids)) / n, "kl": kl_mean,
               **{k: sum(v) / len(v) for k, v in parts_all.items()}, "seconds": time.perf_counter() - t0}  # fmt: skip
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        after_step(run, cfg, step + 1, cfg.steps, end, sampler, metrics, evals,
                   {"model": pv, "ref_model": ref_model, "optimizer": optimizer, "step": step + 1,
                    "opt_step": opt_step})  # fmt: skip
    metrics.close()
    if end < cfg.steps:
        return {"stopped_at": end, "checkpoint": str(ckpt)}
    return finish(run, cfg, {"stage": "align ppo", "steps": cfg.steps}, evals)
