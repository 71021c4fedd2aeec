"""TrainState through checkpoints: a checkpoint written with the plain `save_checkpoint` API (what the training
loop wrote before TrainState) restores whole through `load_train_state`, and `save_train_state` writes the same
layout, readable by `load_checkpoint`."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.config import to_dict
from scratchlm.errors import ScratchLMError
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.train.checkpoint import load_checkpoint, load_train_state, save_checkpoint, save_train_state
from scratchlm.train.config import OptimConfig, ScheduleConfig, TrainConfig
from scratchlm.train.data import RandomWindows, TokenData
from scratchlm.train.losses import LMLoss
from scratchlm.train.noise_scale import NoiseScale
from scratchlm.train.optim import build_optimizer
from scratchlm.train.schedules import Schedule
from scratchlm.train.state import TrainState
from scratchlm.train.step import train_step


def make_state(tiny_data, seed: int, **model) -> TrainState:
    torch.manual_seed(seed)
    base = dict(vocab_size=tiny_data["vocab_size"], context_length=16, d_model=16, n_layers=2, n_heads=2)
    m = TransformerLM(ModelConfig(**{**base, "dropout_resid": 0.1, **model}))
    opt = build_optimizer(m, OptimConfig(lr=1e-2))
    sched = Schedule(opt, ScheduleConfig(warmup_steps=2), total_steps=10)
    loader = RandomWindows(TokenData(tiny_data["train"]), 4, 16, seed=3)
    return TrainState(m, opt, sched, loader, noise_scale=NoiseScale(32, 64))


def step(state: TrainState) -> float:
    x, y = state.loader.next()
    result = train_step(state.model, [(x[:2], y[:2]), (x[2:], y[2:])], LMLoss(), state.optimizer, state.schedule,
                        step=state.step, grad_clip=1.0)  # fmt: skip
    state.step += 1
    return result.loss


def assert_same_run(a: TrainState, b: TrainState) -> None:
    """Equal now, and equal after one more step from the same RNG state (dropout is on)."""
    assert (b.step, b.loader.next_index, b.schedule.last_step) == (a.step, a.loader.next_index, a.schedule.last_step)
    rng = torch.get_rng_state()  # one global generator for both: each step starts from the restored state
    loss_a = step(a)
    torch.set_rng_state(rng)
    assert step(b) == loss_a
    for (k, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), k


def test_checkpoint_of_the_plain_save_api_restores_a_train_state(tiny_data, tmp_path):
    a = make_state(tiny_data, seed=0)
    for _ in range(2):
        step(a)
    a.noise_scale.update(2.0, 1.0)
    # what the training loop wrote before TrainState: the pieces, and its bookkeeping in the metrics
    metrics = {"val_loss": 2.5, "best_val_loss": 2.5, "gns_state": a.noise_scale.state_dict()}
    cfg = to_dict(TrainConfig())
    save_checkpoint(tmp_path, a.step, a.model, a.optimizer, a.schedule, a.loader.state_dict(), cfg, metrics)
    rng = torch.get_rng_state()

    b = make_state(tiny_data, seed=1)  # reseeds and draws: the RNG moves on, to be restored
    meta = load_train_state(tmp_path, b)
    assert torch.equal(torch.get_rng_state(), rng)
    assert meta["step"] == 2 and meta["config"] == cfg
    assert b.best_val_loss == 2.5 and b.noise_scale.state_dict() == a.noise_scale.state_dict()
    assert_same_run(a, b)


def test_save_train_state_writes_the_checkpoint_layout(tiny_data, tmp_path):
    a = make_state(tiny_data, seed=0, tie_embeddings=False)
    step(a)
    path = save_train_state(tmp_path, a, {"seed": 0}, {"val_loss": 3.0}, is_best=True)
    rng = torch.get_rng_state()
    assert path.name == "step_0000001" and {p.name for p in path.iterdir()} == {
        "model.safetensors",
        "state.pt",
        "meta.json",
    }
    b = make_state(tiny_data, seed=1, tie_embeddings=False)
    info = load_checkpoint(tmp_path, b.model, b.optimizer, b.schedule, which="best", restore_rng=True)
    assert torch.equal(torch.get_rng_state(), rng)
    assert info["metrics"] == {"val_loss": 3.0, "best_val_loss": None, "gns_state": a.noise_scale.state_dict()}
    b.loader.load_state_dict(info["data_state"])
    b.step = info["step"]
    assert_same_run(a, b)

    c = make_state(tiny_data, seed=2, tie_embeddings=False)
    load_train_state(tmp_path, c)
    assert c.best_val_loss == math.inf  # saved as null before any evaluation


def test_mismatches_are_clear_errors(tiny_data, tmp_path):
    a = make_state(tiny_data, seed=0)
    save_checkpoint(tmp_path, 1, a.model)  # weights only: no optimizer state
    with pytest.raises(ScratchLMError, match="no optimizer state"):
        load_train_state(tmp_path, make_state(tiny_data, seed=0))
    save_train_state(tmp_path, a)
    with pytest.raises(ScratchLMError, match="does not fit the model"):
        load_train_state(tmp_path, make_state(tiny_data, seed=0, n_layers=3))
