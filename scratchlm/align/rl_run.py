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
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


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


def resume_from(run: RLRun, modules: dict[str, nn.Module | None], optimizer, key: str = "step"):
    """(first step, optimizer steps done, evals so far) from the run's checkpoint, restoring `modules`
    (checkpoint key -> module; None entries are skipped) and the optimizer; `key`: the loop counter's name."""
    state = torch.load(run.ckpt, map_location=run.device, weights_only=True)
    for name, module in modules.items():
        if module is not None:
            module.load_state_dict(state[name])
    optimizer.load_state_dict(state["optimizer"])
    return state[key], state["opt_step"], json.loads(state["evals"])


def sample_step(run: RLRun, sampler, cfg, step: int, n_prompts: int):
    """(tasks, rollouts) of one step: `n_prompts` training tasks drawn with a seed of (cfg.seed, step), so a
    resumed run draws what the uninterrupted one would, each sampled cfg.group_size times."""
    rng = random.Random(cfg.seed * 1_000_003 + step)
    tasks = [run.train[rng.randrange(len(run.train))] for _ in range(n_prompts)]
    ro = sampler.sample([t.prompt_ids for t in tasks], cfg.group_size, cfg.max_tokens, cfg.temperature, cfg.top_p,
                        seed=cfg.seed * 7919 + step)  # fmt: skip
    return tasks, ro
