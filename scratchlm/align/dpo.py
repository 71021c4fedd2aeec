"""Direct preference optimisation (and IPO / SimPO): a thin loop over the shared `train_step`.

    scratchlm align dpo --model smollm2-135m-instruct --data pairs.jsonl.gz --out runs/dpo --set steps=40
    summary = train_dpo(DPOConfig(model="smollm2-135m-instruct", data="pairs.jsonl", out_dir="runs/dpo"))

The reference model is the policy as loaded: its log-probs of every training and held-out pair are computed
once, before the first step (one forward per pair instead of one per step, and no second model in memory).
Each step stacks chosen and rejected rows (2B, T) into one forward; the loss (`PreferenceLoss`, a LossFn)
reads the per-token log-probs, and `train_step` does autocast, accumulation, clipping and the optimizer step.
Logged per step to OUT/metrics.jsonl: loss, reward accuracy, margin, chosen / rejected rewards and log-probs;
held-out preference accuracy (implicit reward of chosen > rejected) before training and every `eval_every`.
OUT/model is a model directory that `serve` / `eval` / `infer` load; OUT/checkpoint.pt resumes exactly.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from scratchlm.align.data import EncodedPair, encode_pairs, preference_pairs, read_jsonl
from scratchlm.align.logprobs import token_log_probs
from scratchlm.align.losses import preference_loss, sequence_log_prob
from scratchlm.align.run_dir import open_run_dir, pad_id, save_checkpoint
from scratchlm.errors import ScratchLMError

log = logging.getLogger(__name__)


@dataclass
class DPOConfig:
    model: str = "smollm2-135m-instruct"  # policy (and reference): pretrained name, model or run directory
    data: str = ""  # JSONL(.gz) of preference pairs (see align/data.py)
    out_dir: str = "runs/dpo"
    kind: Literal["dpo", "ipo", "simpo"] = "dpo"
    beta: float = 0.1
    gamma: float = 0.5  # SimPO's target margin
    steps: int = 40
    batch_size: int = 8  # pairs per optimizer step
    micro_batch: int = 4  # pairs per forward (gradient accumulation over batch_size / micro_batch)
    lr: float = 5e-6
    weight_decay: float = 0.0
    warmup_steps: int = 4
    schedule: Literal["cosine", "constant"] = "cosine"  # after warmup (cosine down to 0.1 x lr)
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    max_len: int = 256  # prompt + response tokens per row (prompts cut from the left to max_len // 2)
    held_out: int = 100  # pairs kept out of training for the held-out accuracy (the last ones of the file)
    max_pairs: int = 0  # use only the first N pairs of the file (0 = all)
    eval_every: int = 0  # held-out accuracy every N steps (0 = before and after only)
    checkpoint_every: int = 10  # OUT/checkpoint.pt every N steps and at the end (resume exactly from it)
    precision: Literal["fp32", "bf16"] = "bf16"
    seed: int = 0
    on_error: Literal["skip", "fatal"] = "skip"  # malformed JSONL lines
    device: str = "cpu"

    def validate(self) -> None:
        if self.batch_size < 1 or self.micro_batch < 1 or self.batch_size % self.micro_batch:
            raise ScratchLMError(f"batch_size {self.batch_size} must be a positive multiple of micro_batch")
        if self.steps < 0 or self.held_out < 0 or self.max_len < 4:
            raise ScratchLMError("steps and held_out must be >= 0 and max_len >= 4")
        if not self.beta > 0:
            raise ScratchLMError(f"beta must be > 0, got {self.beta}")


@dataclass
class PairBatch:
    """The `targets` of PreferenceLoss for B pairs stacked as rows [chosen_0..chosen_B-1, rejected_0..]."""

    labels: Tensor  # (2B, T)
    mask: Tensor  # (2B, T) bool, the response tokens
    ref: Tensor  # (2B,) reference sequence log-probs (unused by SimPO)

    def to(self, device) -> PairBatch:
        return PairBatch(self.labels.to(device), self.mask.to(device), self.ref.to(device))


def stack_pairs(pairs: list[EncodedPair], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """(input_ids, labels, response_mask), each (2B, L - 1): chosen rows first, then rejected."""
    seqs = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    L = max(len(a) + len(b) for a, b in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.bool)
    for r, (a, b) in enumerate(seqs):
        ids[r, : len(a) + len(b)] = torch.tensor(a + b)
        mask[r, len(a) : len(a) + len(b)] = True
    return ids[:, :-1], ids[:, 1:], mask[:, 1:]


@dataclass
class PreferenceLoss:
    """A LossFn for `train_step`: logits (2B, T, V) of stacked pairs -> mean preference loss, parts."""

    kind: str
    beta: float
    gamma: float
    needs: ClassVar[str] = "logits"
    last: dict = field(default_factory=dict)

    def __call__(self, logits: Tensor, y: PairBatch, model: nn.Module | None = None):
        lp = token_log_probs(logits, y.labels)  # (2B, T)
        seq = sequence_log_prob(lp, y.mask, average=self.kind == "simpo")  # (2B,)
        B = seq.shape[0] // 2
        ref = y.ref if self.kind != "simpo" else None
        losses, meta = preference_loss(
            seq[:B], seq[B:], None if ref is None else ref[:B], None if ref is None else ref[B:],
            beta=self.beta, kind=self.kind, gamma=self.gamma,
        )  # fmt: skip
        parts = {k: v.mean() for k, v in meta.items()}
        parts["logp_chosen"], parts["logp_rejected"] = seq[:B].detach().mean(), seq[B:].detach().mean()
        return losses.mean(), parts


@torch.no_grad()
def sequence_log_probs(model: nn.Module, pairs: list[EncodedPair], pad_id: int, micro: int, precision: str, device):
    """(2N,) summed response log-probs of [all chosen..., all rejected...] in batches of `micro` pairs."""
    from scratchlm.train.step import autocast_context

    chosen, rejected = [], []
    for i in range(0, len(pairs), micro):
        x, y, m = (t.to(device) for t in stack_pairs(pairs[i : i + micro], pad_id))
        with autocast_context(precision, device):
            logits = model(x, output="logits")
        seq = sequence_log_prob(token_log_probs(logits, y), m)
        n = seq.shape[0] // 2
        chosen.append(seq[:n].cpu())
        rejected.append(seq[n:].cpu())
    return torch.cat(chosen + rejected) if chosen else torch.zeros(0)


def preference_accuracy(policy_seq: Tensor, ref_seq: Tensor) -> dict:
    """Held-out metrics from (2N,) sequence log-probs: accuracy of the implicit reward (chosen > rejected),
    its 95% Wilson interval, and the mean margin of the log-ratios."""
    n = policy_seq.shape[0] // 2
    ratio = policy_seq - ref_seq
    margin = ratio[:n] - ratio[n:]
    # at the start policy == reference: every margin is 0, a tie; count ties as half right
    acc = ((margin > 0).float() + 0.5 * (margin == 0).float()).mean().item()
    raw = ((policy_seq[:n] > policy_seq[n:]).float()).mean().item()
    return {"accuracy": acc, "ci95": wilson(acc, n), "margin": margin.mean().item(), "n": n,
            "logp_accuracy": raw}  # fmt: skip


def wilson(p: float, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [c - h, c + h]


def load_pairs(cfg: DPOConfig, chat) -> tuple[list[EncodedPair], list[EncodedPair], dict]:
    records, bad_lines = read_jsonl(cfg.data, cfg.on_error)
    pairs, bad_records = preference_pairs(records)
    if cfg.max_pairs:
        pairs = pairs[: cfg.max_pairs]
    enc, stats = encode_pairs(pairs, chat, cfg.max_len)
    stats.update(bad_lines=len(bad_lines), bad_records=len(bad_records))
    if len(enc) <= cfg.held_out:
        raise ScratchLMError(f"{cfg.data}: {len(enc)} usable pairs, not more than held_out = {cfg.held_out}")
    return enc[: len(enc) - cfg.held_out], enc[len(enc) - cfg.held_out :], stats


def train_dpo(cfg: DPOConfig, resume: bool = False, stop_after: int | None = None) -> dict:
    """Run DPO per `cfg`; returns the summary (also OUT/summary.json). `stop_after`: leave after that many
    steps (checkpointed), as an interrupted run would; `resume=True` continues from OUT/checkpoint.pt."""
    from scratchlm.io import write_json
    from scratchlm.model.model_dir import load_model, save_model_dir
    from scratchlm.train.config import OptimConfig, ScheduleConfig
    from scratchlm.train.optim import build_optimizer
    from scratchlm.train.schedules import Schedule
    from scratchlm.train.step import train_step

    cfg.validate()
    out, ckpt = open_run_dir(cfg.out_dir, resume)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model, chat = load_model(cfg.model, device=cfg.device, progress=False)
    pad = pad_id(chat)
    train, held, stats = load_pairs(cfg, chat)
    log.info("DPO: %d training pairs, %d held out; %s", len(train), len(held), stats)

    t0 = time.perf_counter()
    model.eval()  # no dropout: the reference and the policy's first step see the same function
    ref_train = sequence_log_probs(model, train, pad, cfg.micro_batch, cfg.precision, device)
    ref_held = sequence_log_probs(model, held, pad, cfg.micro_batch, cfg.precision, device)
    ref_seconds = time.perf_counter() - t0

    optimizer = build_optimizer(
        model, OptimConfig(lr=cfg.lr, betas=list(cfg.adam_betas), weight_decay=cfg.weight_decay)
    )
    sched_cfg = ScheduleConfig(name=cfg.schedule, warmup_steps=cfg.warmup_steps)
    schedule = Schedule(optimizer, sched_cfg, max(cfg.steps, 1))
    loss_fn = PreferenceLoss(cfg.kind, cfg.beta, cfg.gamma)
    start, evals = 0, []
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, evals = state["step"], json.loads(state["evals"])
    elif held:
        evals.append({"step": 0, **preference_accuracy(ref_held, ref_held)})

    rng_order = list(range(len(train)))
    random.Random(cfg.seed).shuffle(rng_order)
    metrics = (out / "metrics.jsonl").open("a")
    n = len(train)
    step_seconds = []
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    for step in range(start, end):
        model.train()
        idx = [rng_order[(step * cfg.batch_size + j) % n] for j in range(cfg.batch_size)]
        micro = []
        for i in range(0, len(idx), cfg.micro_batch):
            chunk = idx[i : i + cfg.micro_batch]
            x, y, m = stack_pairs([train[j] for j in chunk], pad)
            ref = torch.cat([ref_train[chunk], ref_train[[n + j for j in chunk]]])
            micro.append((x.to(device), PairBatch(y, m, ref).to(device)))
        ts = time.perf_counter()
        r = train_step(model, micro, loss_fn, optimizer, schedule, step=step, precision=cfg.precision,
                       grad_clip=cfg.grad_clip)  # fmt: skip
        step_seconds.append(time.perf_counter() - ts)
        rec = {"kind": "train", "step": step + 1, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm,
               **{k: float(v) for k, v in r.parts.items()}, "seconds": step_seconds[-1]}  # fmt: skip
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        log.info("step %d: loss %.4f acc %.2f margin %.3f", step + 1, r.loss, rec["accuracy"], rec["margin"])
        if not r.finite:
            raise ScratchLMError(f"non-finite DPO loss at step {step + 1}: lower lr or beta")
        last = step + 1 == cfg.steps
        if held and (last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0)):
            model.eval()
            pol = sequence_log_probs(model, held, pad, cfg.micro_batch, cfg.precision, device)
            evals.append({"step": step + 1, **preference_accuracy(pol, ref_held)})
            metrics.write(json.dumps({"kind": "eval", **evals[-1]}) + "\n")
        if step + 1 == end or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0):
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1,
                     "evals": json.dumps(evals)}  # fmt: skip
            save_checkpoint(ckpt, state)
    metrics.close()
    if end < cfg.steps:
        return {"stopped_at": end, "checkpoint": str(ckpt)}
    model.eval()
    save_model_dir(model, chat, out / "model", overwrite=True,
                   provenance={"stage": "align dpo", "base": cfg.model, "steps": cfg.steps})  # fmt: skip
    summary = {"pairs": stats, "train_pairs": len(train), "held_out_pairs": len(held), "evals": evals,
               "reference_seconds": ref_seconds, "step_seconds_median": _median(step_seconds),
               "model_dir": str(out / "model")}  # fmt: skip
    write_json(out / "summary.json", summary)
    return summary


def _median(xs: list[float]) -> float | None:
    return sorted(xs)[len(xs) // 2] if xs else None
