"""Expert iteration: sample from the policy, keep the responses the verifier accepts, fine-tune on them (SFT loss).
The simplest learning-from-verifier baseline GRPO is compared with.

    scratchlm align expert-iter --model smollm2-135m-instruct --prompts train.jsonl --out runs/ei --set reward=gsm8k
    summary = train_expert_iter(ExpertIterConfig(model=..., prompts="train.jsonl", out_dir="runs/ei"))

Each round: `prompts_per_round` prompts x `group_size` samples from the engine (live weights), the responses
with reward >= `min_reward` kept (duplicates of one prompt kept once), then `sft_steps` optimizer steps of
`losses.sft_loss` on them through `train_step`. Logged to OUT/metrics.jsonl; held-out greedy accuracy before
and after (every `eval_every` rounds); OUT/model a model directory, OUT/checkpoint.pt resumes exactly.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from torch import Tensor, nn

from scratchlm.align.logprobs import token_log_probs
from scratchlm.align.losses import sft_loss
from scratchlm.errors import ScratchLMError

log = logging.getLogger(__name__)


@dataclass
class ExpertIterConfig:
    model: str = "smollm2-135m-instruct"
    prompts: str = ""  # JSONL(.gz) of {"prompt", "answer"}
    eval_prompts: str = ""
    held_out: int = 64
    reward: str = "gsm8k"
    out_dir: str = "runs/expert_iter"
    rounds: int = 5
    prompts_per_round: int = 64
    group_size: int = 4
    min_reward: float = 1.0
    sft_steps: int = 10  # optimizer steps per round over the kept responses
    batch_size: int = 16
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    on_error: Literal["skip", "fatal"] = "skip"
    device: str = "cpu"
    kv_cache_mb: int = 256

    def validate(self) -> None:
        if min(self.rounds, self.prompts_per_round, self.group_size, self.batch_size, self.max_tokens) < 1:
            raise ScratchLMError("rounds, prompts_per_round, group_size, batch_size, max_tokens must be >= 1")
        if self.sft_steps < 0:
            raise ScratchLMError(f"sft_steps must be >= 0, got {self.sft_steps}")


@dataclass
class SFTTargets:
    labels: Tensor
    mask: Tensor

    def to(self, device) -> SFTTargets:
        return SFTTargets(self.labels.to(device), self.mask.to(device))


@dataclass
class SFTLoss:
    """A LossFn for `train_step`: the mean negative log-likelihood of the response tokens."""

    needs: ClassVar[str] = "logits"
    last: dict = field(default_factory=dict)

    def __call__(self, logits: Tensor, y: SFTTargets, model: nn.Module | None = None):
        return sft_loss(token_log_probs(logits, y.labels), y.mask), {}


def train_expert_iter(cfg: ExpertIterConfig, resume: bool = False, model_and_chat=None) -> dict:
    """Run expert iteration per `cfg`; returns the summary (also OUT/summary.json)."""
    from scratchlm.align.pg_losses import safe_reward
    from scratchlm.align.rl_run import after_step, begin, finish, sample_step, start_run
    from scratchlm.align.rollout import RolloutSampler, rollout_batch
    from scratchlm.train.config import OptimConfig, ScheduleConfig
    from scratchlm.train.optim import build_optimizer
    from scratchlm.train.schedules import Schedule
    from scratchlm.train.step import train_step

    run = start_run(cfg, resume, model_and_chat)
    device, reward_fn, pad = run.device, run.reward_fn, run.pad
    model, chat = run.model, run.chat
    optimizer = build_optimizer(model, OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay))
    schedule = Schedule(optimizer, ScheduleConfig(name="constant"), max(cfg.rounds * cfg.sft_steps, 1))
    sampler = RolloutSampler(model, chat, kv_cache_mb=cfg.kv_cache_mb, max_num_seqs=64)
    restore = {"model": model, "optimizer": optimizer}
    start, opt_step, evals, metrics = begin(run, cfg, sampler, restore, resume, key="round")
    for rnd in range(start, cfg.rounds):
        t0 = time.perf_counter()
        tasks, ro = sample_step(run, sampler, cfg, rnd, cfg.prompts_per_round)
        kept, seen, errors, hits = [], set(), 0, 0
        for i, (text, resp) in enumerate(zip(ro.texts, ro.response_ids, strict=True)):
            r, ok = safe_reward(reward_fn, text, tasks[i // cfg.group_size].answer)
            errors += not ok
            key = (i // cfg.group_size, tuple(resp))
            if r >= cfg.min_reward:
                hits += 1
                if key not in seen and resp:
                    seen.add(key)
                    kept.append((ro.prompt_ids[i], resp))
        losses = []
        if kept:
            model.train()
            order = random.Random(cfg.seed + rnd)
            for _ in range(cfg.sft_steps):
                rows = [kept[order.randrange(len(kept))] for _ in range(cfg.batch_size)]
                b = rollout_batch([p for p, _ in rows], [r for _, r in rows], pad)
                micro = [(b["input_ids"].to(device), SFTTargets(b["labels"], b["response_mask"]).to(device))]
                res = train_step(model, micro, SFTLoss(), optimizer, schedule, step=opt_step, precision=cfg.precision,
                                 grad_clip=cfg.grad_clip)  # fmt: skip
                opt_step += 1
                losses.append(res.loss)
            model.eval()
        rec = {"kind": "train", "step": rnd + 1, "sampled": len(ro.texts), "correct": hits, "kept": len(kept),
               "accuracy": hits / len(ro.texts), "reward_errors": errors,
               "response_len": sum(map(len, ro.response_ids)) / len(ro.texts),
               "sft_loss_first": losses[0] if losses else None, "sft_loss_last": losses[-1] if losses else None,
               "seconds": time.perf_counter() - t0}  # fmt: skip
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        log.info("round %d: %d/%d correct, kept %d", rnd + 1, hits, len(ro.texts), len(kept))
        after_step(run, cfg, rnd + 1, cfg.rounds, cfg.rounds, sampler, metrics, evals,
                   {"model": model, "optimizer": optimizer, "round": rnd + 1, "opt_step": opt_step})  # fmt: skip
    metrics.close()
    return finish(run, cfg, {"stage": "align expert-iter", "rounds": cfg.rounds}, evals)
