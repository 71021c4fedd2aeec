"""Learning-rate schedules: pure functions step -> factor of the peak lr, and `Schedule`, which
applies one to an optimizer's param groups.

    schedule = Schedule(optimizer, cfg.schedule, total_steps=cfg.steps)
    for step in range(cfg.steps):
        lr = schedule.step(step)   # each group: lr = initial_lr * lr_factor(cfg, step, total_steps)
        ...

Steps count from 0; step s is the (s+1)-th optimizer update. Warmup is linear, factor
(s + 1) / warmup_steps for s < warmup_steps: the first update already moves (a factor of 0 would
waste it) and step warmup_steps - 1 reaches 1.0. After warmup:

- cosine: min + (1 - min) (1 + cos(pi p)) / 2, p = (s - warmup) / (total - warmup), reaching
  min_lr_ratio at s = total_steps (the last step, total - 1, is just above it) and staying there.
- wsd (warmup-stable-decay): 1.0 until the last `decay_fraction` of the run, then a cooldown to
  min_lr_ratio over those round(decay_fraction * total) steps, shaped linear (1 - p), cosine or
  1-sqrt (1 - sqrt(p)), the shape Hagele et al. 2024 ('Scaling Laws and Compute-Optimal Training
  Beyond Fixed Training Durations') found best. Should warmup overlap the cooldown, warmup wins
  until it ends.
- constant: 1.0 after warmup.

Every factor is clamped to its end value beyond total_steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict

import torch

from scratchlm.errors import ScratchLMError
from scratchlm.train.config import ScheduleConfig


def _progress(step: int, start: int, length: int) -> float:
    """Fraction of [start, start + length] covered at `step`, clamped to [0, 1]."""
    return min(max((step - start) / max(length, 1), 0.0), 1.0)


COOLDOWNS: dict[str, Callable[[float], float]] = {  # p in [0, 1] -> shape from 1 to 0
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "1-sqrt": lambda p: 1.0 - math.sqrt(p),
}


def cosine_factor(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    p = _progress(step, cfg.warmup_steps, total_steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * COOLDOWNS["cosine"](p)


def wsd_factor(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    decay_steps = round(cfg.decay_fraction * total_steps)
    p = _progress(step, total_steps - decay_steps, decay_steps)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * COOLDOWNS[cfg.cooldown](p)


def constant_factor(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    return 1.0


SCHEDULES: dict[str, Callable[[ScheduleConfig, int, int], float]] = {
    "cosine": cosine_factor,
    "wsd": wsd_factor,
    "constant": constant_factor,
}


def lr_factor(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    """The lr multiplier at `step` (0-based) of a `total_steps` run: warmup, then the named shape."""
    if cfg.name not in SCHEDULES:
        raise ScratchLMError(f"unknown schedule {cfg.name!r}: expected one of {', '.join(SCHEDULES)}")
    if cfg.name == "wsd" and cfg.cooldown not in COOLDOWNS:
        raise ScratchLMError(f"unknown WSD cooldown {cfg.cooldown!r}: expected one of {', '.join(COOLDOWNS)}")
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return SCHEDULES[cfg.name](cfg, step, total_steps)


class Schedule:
    """Sets each param group's lr to its "initial_lr" (the group's lr when first seen, unless
    already set, e.g. by `optim.build_optimizer`) times `lr_factor`."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int):
        self.optimizer, self.cfg, self.total_steps = optimizer, cfg, total_steps
        self.last_step: int | None = None
        lr_factor(cfg, 0, total_steps)  # unknown names fail here, not at the first step
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def step(self, step: int) -> float:
        """Set the lrs for optimizer step `step`; returns the first param group's lr (optim.lr x
        factor for `build_optimizer`'s optimizers, whose first group is an AdamW group)."""
        factor = lr_factor(self.cfg, step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        self.last_step = step
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"config": asdict(self.cfg), "total_steps": self.total_steps, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        """Restore the config and the last step, and set the lrs of that step again."""
        self.cfg = ScheduleConfig(**state["config"])
        self.total_steps = state["total_steps"]
        self.last_step = state["last_step"]
        if self.last_step is not None:
            self.step(self.last_step)
