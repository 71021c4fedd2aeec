"""LR schedules: values at chosen steps, monotonic pieces, the Schedule wrapper and its state."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.train.config import ScheduleConfig
from scratchlm.train.schedules import COOLDOWNS, Schedule, lr_factor

TOTAL = 1000


def factors(cfg: ScheduleConfig, total: int = TOTAL) -> list[float]:
    return [lr_factor(cfg, s, total) for s in range(total + 50)]


def is_monotonic(xs: list[float], decreasing: bool) -> bool:
    return all((b <= a + 1e-12) if decreasing else (b >= a - 1e-12) for a, b in zip(xs, xs[1:]))


@pytest.mark.parametrize("name", ["cosine", "wsd", "constant"])
def test_warmup(name):
    cfg = ScheduleConfig(name=name, warmup_steps=100, min_lr_ratio=0.1)
    assert lr_factor(cfg, 0, TOTAL) == pytest.approx(1 / 100)  # the first update already moves
    assert lr_factor(cfg, 49, TOTAL) == pytest.approx(0.5)
    assert lr_factor(cfg, 99, TOTAL) == 1.0  # end of warmup
    assert lr_factor(cfg, 100, TOTAL) == pytest.approx(1.0)
    assert is_monotonic(factors(cfg)[:100], decreasing=False)


def test_no_warmup_starts_at_peak():
    for name in ("cosine", "wsd", "constant"):
        assert lr_factor(ScheduleConfig(name=name, warmup_steps=0), 0, TOTAL) == 1.0


def test_cosine_values():
    cfg = ScheduleConfig(name="cosine", warmup_steps=100, min_lr_ratio=0.1)
    middle = 100 + (TOTAL - 100) // 2
    assert lr_factor(cfg, middle, TOTAL) == pytest.approx(0.55)  # halfway: (1 + min) / 2
    assert lr_factor(cfg, TOTAL - 1, TOTAL) == pytest.approx(0.1, abs=1e-5)  # last step, just above min
    assert lr_factor(cfg, TOTAL, TOTAL) == pytest.approx(0.1)
    assert lr_factor(cfg, TOTAL + 500, TOTAL) == pytest.approx(0.1)  # beyond the end: stays
    assert is_monotonic(factors(cfg)[99:], decreasing=True)


@pytest.mark.parametrize("cooldown", list(COOLDOWNS))
def test_wsd_values(cooldown):
    cfg = ScheduleConfig(name="wsd", warmup_steps=100, min_lr_ratio=0.0, decay_fraction=0.2, cooldown=cooldown)
    fs = factors(cfg)
    assert all(f == 1.0 for f in fs[99:800])  # stable until the last 20% (decay starts at step 800)
    halfway = {"linear": 0.5, "cosine": 0.5, "1-sqrt": 1 - math.sqrt(0.5)}[cooldown]
    assert lr_factor(cfg, 900, TOTAL) == pytest.approx(halfway)
    assert lr_factor(cfg, TOTAL, TOTAL) == 0.0
    assert lr_factor(cfg, TOTAL + 10, TOTAL) == 0.0
    assert is_monotonic(fs[800:], decreasing=True)


def test_wsd_min_lr_ratio_and_sqrt_shape():
    cfg = ScheduleConfig(name="wsd", warmup_steps=0, min_lr_ratio=0.1, decay_fraction=0.5, cooldown="1-sqrt")
    # p = (step - 500) / 500; factor = 0.1 + 0.9 * (1 - sqrt(p))
    for step in (500, 625, 750, 1000):
        p = (step - 500) / 500
        assert lr_factor(cfg, step, TOTAL) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(p)))


def test_constant():
    cfg = ScheduleConfig(name="constant", warmup_steps=10)
    assert all(f == 1.0 for f in factors(cfg)[9:])


def test_unknown_names_raise():
    with pytest.raises(ScratchLMError, match="unknown schedule"):
        lr_factor(ScheduleConfig(name="linear"), 0, TOTAL)
    with pytest.raises(ScratchLMError, match="cooldown"):
        lr_factor(ScheduleConfig(name="wsd", cooldown="exp"), 0, TOTAL)


def make_optimizer() -> torch.optim.Optimizer:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.02}], lr=0.1)
    return opt


def test_schedule_scales_every_group_from_its_initial_lr():
    opt = make_optimizer()
    cfg = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    schedule = Schedule(opt, cfg, total_steps=100)
    for step in (0, 5, 9, 50, 99, 150):
        lr = schedule.step(step)
        f = lr_factor(cfg, step, 100)
        assert lr == pytest.approx(0.1 * f)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * f, 0.02 * f])
        assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.02]


def test_schedule_state_round_trip():
    cfg = ScheduleConfig(name="wsd", warmup_steps=5, decay_fraction=0.3, cooldown="linear", min_lr_ratio=0.05)
    opt = make_optimizer()
    schedule = Schedule(opt, cfg, total_steps=50)
    schedule.step(40)
    state = schedule.state_dict()
    other_opt = make_optimizer()
    other = Schedule(other_opt, ScheduleConfig(), total_steps=1)
    other.load_state_dict(state)
    assert other.cfg == cfg and other.total_steps == 50 and other.last_step == 40
    assert [g["lr"] for g in other_opt.param_groups] == [g["lr"] for g in opt.param_groups]
    for step in (41, 45, 49):
        assert other.step(step) == schedule.step(step)
