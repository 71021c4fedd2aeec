"""GRPO (and REINFORCE) from a verifier: a thin loop of engine rollouts and `train_step` optimizer steps.

    scratchlm align grpo --model smollm2-135m-instruct --prompts train.jsonl --out runs/grpo --set reward=gsm8k
    summary = train_grpo(GRPOConfig(model=..., prompts="train.jsonl", out_dir="runs/grpo", reward="gsm8k"))

Each step: `prompts_per_step` prompts, `group_size` samples each from the inference engine running the live
policy (rollout.py; the engine's log-probs of the sampled tokens are the old policy's, tested equal to the
trainer's forward), rewards from the verifier, group-normalised advantages (pg_losses.py), then
`epochs_per_batch` passes of optimizer steps over the rollouts (`train_batch` rollouts each): after the
first step the data is off-policy and GRPO-clip's ratio clipping bounds the update.
Logged per step to OUT/metrics.jsonl: loss, reward mean / std, accuracy, response length, entropy,
clip fraction, KL (with kl_coef), reward errors; held-out accuracy (greedy) before, every `eval_every`
steps and at the end. OUT/model is a model directory (serve / eval / infer load it); OUT/checkpoint.pt
resumes exactly (rollout seeds and prompt order are functions of the step).

Prompts file: JSONL of {"prompt": text or chat messages, "answer": ground truth} ("question" and
"ground_truth" are accepted too); malformed lines are named by line number.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from scratchlm.align.logprobs import masked_mean, masked_normalize, token_entropy, token_log_probs
from scratchlm.align.pg_losses import LOSS_TYPES, compute_group_normalized_rewards, compute_policy_gradient_loss, kl_k3
from scratchlm.errors import ScratchLMError

log = logging.getLogger(__name__)


@dataclass
class GRPOConfig:
    model: str = "smollm2-135m-instruct"  # policy: pretrained name, model or run directory
    prompts: str = ""  # JSONL(.gz) of {"prompt", "answer"}
    eval_prompts: str = ""  # held-out prompts file; "" = the last `held_out` prompts of `prompts`
    held_out: int = 64
    reward: str = "gsm8k"  # a name in rewards.REWARDS or "module:function"
    out_dir: str = "runs/grpo"
    steps: int = 20  # rollout batches
    prompts_per_step: int = 8
    group_size: int = 8
    epochs_per_batch: int = 1  # passes over each rollout batch
    train_batch: int = 0  # rollouts per optimizer step; 0 = the whole rollout batch (one step per pass)
    micro_batch: int = 16  # rollouts per forward (gradient accumulation up to train_batch)
    loss_type: Literal["no_baseline", "reinforce_with_baseline", "grpo_clip"] = "grpo_clip"
    cliprange: float = 0.2
    normalize_by_std: bool = True  # False: Dr. GRPO's advantages (reward - group mean)
    advantage_eps: float = 1e-6
    length_normalization: Literal["mean", "constant"] = "mean"  # "constant": sum / max_tokens (Dr. GRPO)
    kl_coef: float = 0.0  # k3 KL to the initial policy (a frozen copy is kept when > 0)
    max_tokens: int = 64  # per response
    temperature: float = 1.0
    top_p: float = 1.0
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    eval_every: int = 0  # held-out accuracy every N steps (0 = before and after only)
    checkpoint_every: int = 5
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    on_error: Literal["skip", "fatal"] = "skip"  # malformed prompt lines; prompts too long for the context
    device: str = "cpu"
    kv_cache_mb: int = 256

    def validate(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ScratchLMError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        rollouts = self.prompts_per_step * self.group_size
        tb = self.train_batch or rollouts
        if min(self.prompts_per_step, self.group_size, self.epochs_per_batch, self.micro_batch, self.max_tokens) < 1:
            raise ScratchLMError("prompts_per_step, group_size, epochs_per_batch, micro_batch, max_tokens must be >= 1")
        if rollouts % tb or tb % min(self.micro_batch, tb):
            raise ScratchLMError(
                f"train_batch {tb} must divide the {rollouts} rollouts per step and be a multiple of micro_batch"
            )
        if self.loss_type != "no_baseline" and self.group_size < 2:
            raise ScratchLMError(f"{self.loss_type} needs group_size >= 2 (the baseline is the group's mean)")


@dataclass
class Task:
    prompt_ids: list[int]
    answer: str
    text: str


def prompt_ids(chat, prompt) -> list[int]:
    """Token ids of a prompt: chat messages (or a string as one user turn) through the chat template with the
    generation prompt; a plain string's own tokens when the tokenizer has no template (a base model)."""
    if chat.chat_template is not None:
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return list(chat.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
    if not isinstance(prompt, str):
        raise ScratchLMError("chat messages need a tokenizer with a chat template")
    return list(chat.encode(prompt, add_special=False))


def load_tasks(path: str, chat, max_prompt_len: int, on_error: str = "skip") -> tuple[list[Task], dict]:
    """Tasks of a prompts file, and counts of what was left out (malformed lines, missing fields, prompts
    longer than `max_prompt_len`), each problem named by line or record number."""
    from scratchlm.align.data import read_jsonl

    records, problems = read_jsonl(path, on_error)
    tasks, skipped = [], []
    for i, r in enumerate(records):
        prompt = r.get("prompt", r.get("question"))
        answer = r.get("answer", r.get("ground_truth"))
        problem = None
        if prompt is None or answer is None:
            problem = f"{Path(path).name} record {i}: needs 'prompt' (or 'question') and 'answer' (or 'ground_truth')"
        else:
            ids = prompt_ids(chat, prompt)
            if len(ids) > max_prompt_len:
                problem = (
                    f"{Path(path).name} record {i}: prompt of {len(ids)} tokens > {max_prompt_len}"
                    " (context - max_tokens)"
                )
            elif not ids:
                problem = f"{Path(path).name} record {i}: empty prompt"
        if problem:
            if on_error == "fatal":
                raise ScratchLMError(problem)
            skipped.append(problem)
            continue
        tasks.append(Task(ids, str(answer), prompt if isinstance(prompt, str) else json.dumps(prompt)))
    for p in skipped[:5]:
        log.warning("skipped %s", p)
    return tasks, {"records": len(records), "bad_lines": len(problems), "skipped": len(skipped)}


@dataclass
class RolloutTargets:
    """The `targets` of PolicyGradientLoss for a micro-batch of rollouts (B, T)."""

    labels: Tensor
    mask: Tensor
    advantages: Tensor  # (B, 1)
    raw_rewards: Tensor  # (B, 1)
    old_log_probs: Tensor  # (B, T)
    ref_log_probs: Tensor | None = None

    def to(self, device) -> RolloutTargets:
        fields = (self.labels, self.mask, self.advantages, self.raw_rewards, self.old_log_probs, self.ref_log_probs)
        return RolloutTargets(*(None if t is None else t.to(device) for t in fields))


@dataclass
class PolicyGradientLoss:
    """A LossFn for `train_step`: the per-token policy-gradient loss (+ kl_coef x k3 KL), reduced per response
    (mean over its tokens, or sum / normalize_constant) and averaged over the micro-batch, as
    `pg_losses.grpo_microbatch_train_step` does (without its backward: train_step calls it)."""

    loss_type: str
    cliprange: float
    length_normalization: str = "mean"
    normalize_constant: float | None = None
    kl_coef: float = 0.0
    needs: ClassVar[str] = "logits"
    last: dict = field(default_factory=dict)

    def __call__(self, logits: Tensor, y: RolloutTargets, model: nn.Module | None = None):
        lp = token_log_probs(logits, y.labels)  # (B, T)
        per_token, meta = compute_policy_gradient_loss(
            lp, self.loss_type, y.raw_rewards, y.advantages, y.old_log_probs, self.cliprange
        )
        parts = {}
        if self.kl_coef:
            kl = kl_k3(lp, y.ref_log_probs)
            per_token = per_token + self.kl_coef * kl
            parts["kl"] = masked_mean(kl.detach(), y.mask)
        if self.length_normalization == "constant":
            per_seq = masked_normalize(per_token, y.mask, self.normalize_constant, dim=-1)
        else:
            per_seq = masked_mean(per_token, y.mask, dim=-1)
        with torch.no_grad():
            parts["entropy"] = masked_mean(token_entropy(logits), y.mask)
            if "clipped" in meta:
                parts["clip_fraction"] = masked_mean(meta["clipped"].float(), y.mask)
                parts["ratio_max"] = (meta["ratio"] * y.mask).max()
        return per_seq.mean(), parts


@torch.no_grad()
def evaluate(sampler, tasks: list[Task], reward_fn, max_tokens: int, batch: int = 64) -> dict:
    """Greedy accuracy (reward 1) on `tasks`, its 95% Wilson interval, mean response length."""
    from scratchlm.align.dpo import wilson
    from scratchlm.align.pg_losses import safe_reward

    hits, lengths, errors = 0.0, 0, 0
    for i in range(0, len(tasks), batch):
        chunk = tasks[i : i + batch]
        ro = sampler.sample([t.prompt_ids for t in chunk], 1, max_tokens, temperature=0.0)
        for t, text, ids in zip(chunk, ro.texts, ro.response_ids, strict=True):
            r, ok = safe_reward(reward_fn, text, t.answer)
            hits += r >= 1.0
            errors += not ok
            lengths += len(ids)
    n = len(tasks)
    acc = hits / max(n, 1)
    return {"accuracy": acc, "ci95": wilson(acc, n), "n": n, "response_len": lengths / max(n, 1),
            "reward_errors": errors}  # fmt: skip


def build_micro_batches(ro, idx: list[int], adv: Tensor, raw: Tensor, old_lp: Tensor, ref_lp, pad: int, micro: int):
    """[(input_ids, RolloutTargets)] over rollouts `idx`, `micro` rows at a time, padded per micro-batch."""
    from scratchlm.align.rollout import engine_log_probs_tensor, rollout_batch

    out = []
    for i in range(0, len(idx), micro):
        rows = idx[i : i + micro]
        sub = _subset(ro, rows)
        b = rollout_batch(sub.prompt_ids, sub.response_ids, pad)
        shape = b["labels"].shape
        old = engine_log_probs_tensor(_with_log_probs(sub, [old_lp[j] for j in rows]), shape)
        ref = (
            None if ref_lp is None else engine_log_probs_tensor(_with_log_probs(sub, [ref_lp[j] for j in rows]), shape)
        )
        y = RolloutTargets(b["labels"], b["response_mask"], adv[rows, None], raw[rows, None], old, ref)
        out.append((b["input_ids"], y))
    return out


def _subset(ro, rows):
    from scratchlm.align.rollout import Rollouts

    names = ("prompt_ids", "response_ids", "texts", "log_probs", "finish_reasons")
    return Rollouts(*([getattr(ro, f)[j] for j in rows] for f in names))


def _with_log_probs(ro, lps):
    from scratchlm.align.rollout import Rollouts

    return Rollouts(ro.prompt_ids, ro.response_ids, ro.texts, lps, ro.finish_reasons)


@torch.no_grad()
def score_rollouts(model: nn.Module, ro, pad: int, micro: int) -> list[list[float]]:
    """Per-token log-probs of each rollout's response under `model` (the reference for the KL term)."""
    from scratchlm.align.rollout import rollout_batch

    out = []
    for i in range(0, len(ro.prompt_ids), micro):
        b = rollout_batch(ro.prompt_ids[i : i + micro], ro.response_ids[i : i + micro], pad)
        lp = token_log_probs(model(b["input_ids"], output="logits"), b["labels"])
        for k, m in enumerate(b["response_mask"]):
            out.append(lp[k][m].tolist())
    return out


def setup(cfg, chat, model):
    """(train tasks, held-out tasks, stats) honouring the context length."""
    ctx = model.config.context_length
    max_prompt = ctx - cfg.max_tokens
    if max_prompt < 1:
        raise ScratchLMError(f"max_tokens {cfg.max_tokens} leaves no room for a prompt in the context of {ctx}")
    tasks, stats = load_tasks(cfg.prompts, chat, max_prompt, cfg.on_error)
    if cfg.eval_prompts:
        held, _ = load_tasks(cfg.eval_prompts, chat, max_prompt, cfg.on_error)
        train = tasks
    else:
        if len(tasks) <= cfg.held_out:
            raise ScratchLMError(f"{cfg.prompts}: {len(tasks)} usable prompts, not more than held_out = {cfg.held_out}")
        train, held = tasks[: len(tasks) - cfg.held_out], tasks[len(tasks) - cfg.held_out :]
    if not train:
        raise ScratchLMError(f"{cfg.prompts}: no usable prompts")
    return train, held, stats


def train_grpo(cfg: GRPOConfig, resume: bool = False, stop_after: int | None = None, model_and_chat=None) -> dict:
    """Run GRPO per `cfg`; returns the summary (also OUT/summary.json). `stop_after`: leave after that many
    steps (checkpointed); `resume=True` continues from OUT/checkpoint.pt. `model_and_chat`: an in-memory
    (model, chat) instead of loading `cfg.model` (tests, notebooks)."""
    import copy

    from scratchlm.align.rl_run import after_step, begin, finish, sample_step, start_run
    from scratchlm.align.rollout import RolloutSampler
    from scratchlm.train.config import OptimConfig, ScheduleConfig
    from scratchlm.train.optim import build_optimizer
    from scratchlm.train.schedules import Schedule
    from scratchlm.train.step import train_step

    run = start_run(cfg, resume, model_and_chat)
    ckpt, device, reward_fn, pad = run.ckpt, run.device, run.reward_fn, run.pad
    model, chat, train, held, stats = run.model, run.chat, run.train, run.held, run.stats
    log.info("GRPO: %d training prompts, %d held out; %s", len(train), len(held), stats)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.kl_coef else None

    rollouts_per_step = cfg.prompts_per_step * cfg.group_size
    tb = cfg.train_batch or rollouts_per_step
    opt_steps = cfg.steps * cfg.epochs_per_batch * (rollouts_per_step // tb)
    optimizer = build_optimizer(model, OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, betas=[0.9, 0.99]))
    schedule = Schedule(optimizer, ScheduleConfig(name="constant", warmup_steps=cfg.warmup_steps), max(opt_steps, 1))
    loss_fn = PolicyGradientLoss(cfg.loss_type, cfg.cliprange, cfg.length_normalization, float(cfg.max_tokens),
                                 cfg.kl_coef)  # fmt: skip
    sampler = RolloutSampler(model, chat, kv_cache_mb=cfg.kv_cache_mb, max_num_seqs=max(64, rollouts_per_step))

    restore = {"model": model, "ref_model": ref_model, "optimizer": optimizer}
    start, opt_step, evals, metrics = begin(run, cfg, sampler, restore, resume)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    step_seconds = []
    for step in range(start, end):
        t0 = time.perf_counter()
        batch_tasks, ro = sample_step(run, sampler, cfg, step, cfg.prompts_per_step)
        t_roll = time.perf_counter() - t0
        truths = [t.answer for t in batch_tasks for _ in range(cfg.group_size)]
        adv, raw, rmeta = compute_group_normalized_rewards(
            reward_fn, ro.texts, truths, cfg.group_size, cfg.advantage_eps, cfg.normalize_by_std
        )
        ref_lp = score_rollouts(ref_model, ro, pad, cfg.micro_batch) if ref_model is not None else None
        # the engine's log-probs are the sampling policy's (old) log-probs: no extra forward
        parts_all, losses = {}, []
        model.train()
        for epoch in range(cfg.epochs_per_batch):
            order = list(range(rollouts_per_step))
            random.Random(cfg.seed + 31 * step + epoch).shuffle(order)
            for s in range(0, rollouts_per_step, tb):
                micro = build_micro_batches(ro, order[s : s + tb], adv, raw, ro.log_probs, ref_lp, pad,
                                            min(cfg.micro_batch, tb))  # fmt: skip
                micro = [(x.to(device), y.to(device)) for x, y in micro]
                r = train_step(model, micro, loss_fn, optimizer, schedule, step=opt_step, precision=cfg.precision,
                               grad_clip=cfg.grad_clip)  # fmt: skip
                opt_step += 1
                if not r.finite:
                    raise ScratchLMError(f"non-finite GRPO loss at step {step + 1}: lower lr")
                losses.append(r.loss)
                for k, v in r.parts.items():
                    parts_all.setdefault(k, []).append(float(v))
        model.eval()
        step_seconds.append(time.perf_counter() - t0)
        lengths = [len(x) for x in ro.response_ids]
        rec = {"kind": "train", "step": step + 1, "loss": losses[0], "loss_last": losses[-1],
               "reward": rmeta["reward_mean"], "reward_std": rmeta["reward_std"],
               "accuracy": float((raw >= 1).float().mean()), "groups_all_same": rmeta["groups_all_same"],
               "reward_errors": rmeta["reward_errors"], "response_len": sum(lengths) / len(lengths),
               "truncated": sum(f == "length" for f in ro.finish_reasons) / len(lengths),
               **{k: sum(v) / len(v) for k, v in parts_all.items()}, "lr": r.lr, "grad_norm": r.grad_norm,
               "rollout_seconds": t_roll, "seconds": step_seconds[-1]}  # fmt: skip
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        log.info("step %d: reward %.3f len %.1f loss %.4f", step + 1, rec["reward"], rec["response_len"], rec["loss"])
        after_step(run, cfg, step + 1, cfg.steps, end, sampler, metrics, evals,
                   {"model": model, "ref_model": ref_model, "optimizer": optimizer, "step": step + 1,
                    "opt_step": opt_step})  # fmt: skip
    metrics.close()
    if end < cfg.steps:
        return {"stopped_at": end, "checkpoint": str(ckpt)}
    median = sorted(step_seconds)[len(step_seconds) // 2] if step_seconds else None
    return finish(run, cfg, {"stage": "align grpo", "steps": cfg.steps}, evals, step_seconds_median=median)
