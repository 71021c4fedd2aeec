"""What the sampling trainers (GRPO, PPO, expert iteration) share around their own update: the run's set-up,
resuming from its checkpoint and drawing each step's prompts and rollouts.

    run = start_run(cfg, resume, model_and_chat)           # run dir, model, tasks, reward function
    resumed = resume and run.ckpt.is_file()
    start, opt_step, evals = resume_from(run, {"model": model}, optimizer) if resumed else (0, 0, [])
    tasks, ro = sample_step(run, sampler, cfg, step, cfg.prompts_per_step)

Each trainer keeps its own loop body: the loss and what it logs differ.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class RLRun:
    out: Path  # the run directory
    ckpt: Path  # its checkpoint file
    device: torch.device
    reward_fn: object  # (response text, answer) -> reward
    model: nn.Module
    chat: object
    pad: int
    train: list  # grpo.Task
    held: list
    stats: dict  # how many prompts were read, kept, skipped


def start_run(cfg, resume: bool, model_and_chat=None) -> RLRun:
    """Validate `cfg`, claim its run directory, seed, load the model (or take `model_and_chat`) and its tasks."""
    from scratchlm.align.grpo import setup
    from scratchlm.align.rewards import reward_function
    from scratchlm.align.run_dir import open_run_dir, pad_id
    from scratchlm.model.model_dir import load_model

    cfg.validate()
    out, ckpt = open_run_dir(cfg.out_dir, resume)
    torch.manual_seed(cfg.seed)
    reward_fn = reward_function(cfg.reward)
    model, chat = (
        model_and_chat if model_and_chat is not None else load_model(cfg.model, device=cfg.device, progress=False)
    )
    train, held, stats = setup(cfg, chat, model)
    return RLRun(out, ckpt, torch.device(cfg.device), reward_fn, model, chat, pad_id(chat), train, held, stats)


def begin(run: RLRun, cfg, sampler, state: dict, resume: bool, key: str = "step"):
    """(first step, optimizer steps done, evals, open metrics file). Resuming: `state`'s modules and optimizer
    (checkpoint name -> object, None skipped) restored from the checkpoint; `key` names the loop counter.
    Otherwise the held-out accuracy before training, logged as the first eval."""
    from scratchlm.align.grpo import evaluate

    metrics = (run.out / "metrics.jsonl").open("a")
    if resume and run.ckpt.is_file():
        saved = torch.load(run.ckpt, map_location=run.device, weights_only=True)
        for name, obj in state.items():
            if obj is not None:
                obj.load_state_dict(saved[name])
        return saved[key], saved["opt_step"], json.loads(saved["evals"]), metrics
    evals = []
    if run.held:
        evals.append({"step": 0, **evaluate(sampler, run.held, run.reward_fn, cfg.max_tokens)})
        metrics.write(json.dumps({"kind": "eval", **evals[-1]}) + "\n")
        log.info("held-out accuracy before: %.3f", evals[-1]["accuracy"])
    return 0, 0, evals, metrics


def sample_step(run: RLRun, sampler, cfg, step: int, n_prompts: int):
    """(tasks, rollouts) of one step: `n_prompts` training tasks drawn with a seed of (cfg.seed, step), so a
    resumed run draws what the uninterrupted one would, each sampled cfg.group_size times."""
    rng = random.Random(cfg.seed * 1_000_003 + step)
    tasks = [run.train[rng.randrange(len(run.train))] for _ in range(n_prompts)]
    ro = sampler.sample([t.prompt_ids for t in tasks], cfg.group_size, cfg.max_tokens, cfg.temperature, cfg.top_p,
                        seed=cfg.seed * 7919 + step)  # fmt: skip
    return tasks, ro


def after_step(run: RLRun, cfg, done: int, total: int, end: int, sampler, metrics, evals: list, state: dict) -> None:
    """After step `done` (1-based) of `total`: held-out accuracy when due (every cfg.eval_every and at the
    last step, logged to `metrics`), a checkpoint when due (every cfg.checkpoint_every, default every step, and
    at `end`, where the run stops). `state`: module name -> module (None skipped), plus plain entries."""
    from scratchlm.align.grpo import evaluate
    from scratchlm.align.run_dir import save_checkpoint

    every = getattr(cfg, "eval_every", 0)
    if run.held and (done == total or (every and done % every == 0)):
        evals.append({"step": done, **evaluate(sampler, run.held, run.reward_fn, cfg.max_tokens)})
        metrics.write(json.dumps({"kind": "eval", **evals[-1]}) + "\n")
        metrics.flush()
    every = getattr(cfg, "checkpoint_every", 1)
    if done == end or (every and done % every == 0):
        plain = {k: v for k, v in state.items() if not isinstance(v, nn.Module | torch.optim.Optimizer)}
        saved = {k: v.state_dict() for k, v in state.items() if isinstance(v, nn.Module | torch.optim.Optimizer)}
        save_checkpoint(run.ckpt, saved | plain | {"evals": json.dumps(evals)})


def finish(run: RLRun, cfg, provenance: dict, evals: list, **extra) -> dict:
    """Save the trained model as OUT/model and the summary as OUT/summary.json; returns the summary."""
    from scratchlm.io import write_json
    from scratchlm.model.model_dir import save_model_dir

    save_model_dir(run.model, run.chat, run.out / "model", overwrite=True, provenance={**provenance, "base": cfg.model})
    summary = {"prompts": run.stats, "train_prompts": len(run.train), "held_out_prompts": len(run.held),
               "evals": evals, **extra, "model_dir": str(run.out / "model")}  # fmt: skip
    write_json(run.out / "summary.json", summary)
    return summary
