"""Checkpoints written before the core redesign (tests/fixtures/ckpt_v1, made by
tests/fixtures/make_old_checkpoint.py with commit e63d818) load into today's model and optimizer: the same
logits, and one more optimizer step lands on the parameters the old code reached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.config import from_dict
from scratchlm.model import TransformerLM
from scratchlm.model.primitives import cross_entropy
from scratchlm.train.checkpoint import load_checkpoint, read_checkpoint_meta
from scratchlm.train.config import TrainConfig
from scratchlm.train.optim import build_optimizer
from scratchlm.train.schedules import Schedule

FIXTURES = Path(__file__).parents[1] / "fixtures" / "ckpt_v1"


@pytest.mark.parametrize("name", ["dense_gqa_window", "moe_ssm"])
def test_old_checkpoint_loads_and_resumes(name):
    run = FIXTURES / name
    step_dir = run / "checkpoints" / "step_0000002"
    cfg = from_dict(TrainConfig, read_checkpoint_meta(step_dir)["config"])
    assert cfg.model.ops == "torch" and cfg.model.attn_backend == "sdpa"  # fields the old code did not know
    model = TransformerLM(cfg.model)
    opt = build_optimizer(model, cfg.optim)
    sched = Schedule(opt, cfg.schedule, cfg.steps)
    load_checkpoint(run, model, opt, sched)
    want = load_file(run / "expected.safetensors")
    x, y = want["input"][:, :-1], want["input"][:, 1:]
    with torch.no_grad():
        # the old model ran the own elementwise norms; torch's fused ones differ by rounding only
        torch.testing.assert_close(model(x), want["logits"], rtol=1e-5, atol=1e-5)
    sched.step(2)
    (cross_entropy(model(x), y) + model.aux_loss()).backward()
    opt.step()
    after = {k[len("after.") :]: v for k, v in want.items() if k.startswith("after.")}
    state = model.state_dict()
    assert set(after) <= set(state) and len(after) >= len(state) - 1
    for k, v in after.items():
        torch.testing.assert_close(state[k], v, rtol=1e-4, atol=1e-5, msg=f"{name}: {k} after the resumed step")
