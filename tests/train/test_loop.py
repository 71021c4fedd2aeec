"""The training loop end to end: loss drops, invariances (accumulation, resume, DDP), bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from scratchlm.config import load_config
from scratchlm.errors import ScratchLMError
from scratchlm.train.config import TrainConfig
from scratchlm.train.loop import train


def cfg_for(tiny_data, tmp_path, name="run", **over) -> TrainConfig:
    base = {
        "out_dir": str(tmp_path / name),
        "data": {"train": str(tiny_data["train"]), "valid": str(tiny_data["valid"])},
        "model": {"vocab_size": tiny_data["vocab_size"]},
    }
    overrides = []
    for k, v in over.items():  # nested dicts become dotted keys
        items = {f"{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v}
        overrides += [f"{kk}={json.dumps(vv)}" for kk, vv in items.items()]
    return load_config(TrainConfig, "train", "debug", overrides, base=base)


def losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def test_tiny_run_learns_and_writes_its_outputs(tiny_data, tmp_path):
    summary = train(cfg_for(tiny_data, tmp_path, steps=60, log_every=5, eval_every=30), progress=False)
    run = tmp_path / "run"
    trace = losses(run)
    assert trace[-1] < 0.75 * trace[0]  # random word choice: the floor is ~ln(20) = 3.0 nats
    assert summary["val_loss"] < 3.3 and summary["val_bpb"] > 0 and summary["steps"] == 60
    for name in ("config.toml", "metrics.jsonl", "loss.png", "summary.json", "samples.txt"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "best.json").is_file() and (run / "checkpoints" / "latest.json").is_file()


def test_grad_accumulation_4x1_equals_1x4(tiny_data, tmp_path):
    a = cfg_for(tiny_data, tmp_path, "a", steps=6, log_every=1, batch_size=8, grad_accum=1, eval_every=0)
    b = cfg_for(tiny_data, tmp_path, "b", steps=6, log_every=1, batch_size=2, grad_accum=4, eval_every=0)
    train(a, progress=False)
    train(b, progress=False)
    torch.testing.assert_close(
        torch.tensor(losses(tmp_path / "a")), torch.tensor(losses(tmp_path / "b")), atol=1e-5, rtol=0
    )


def test_fused_loss_follows_the_unfused_trajectory(tiny_data, tmp_path):
    """model.fused_loss (chunked head + cross-entropy, no logits) trains the same model, also accumulated."""
    a = cfg_for(tiny_data, tmp_path, "a", steps=6, log_every=1, grad_accum=2, eval_every=0)
    b = cfg_for(tiny_data, tmp_path, "b", steps=6, log_every=1, grad_accum=2, eval_every=0, model={"fused_loss": True})
    train(a, progress=False)
    train(b, progress=False)
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-4)
    with pytest.raises(ScratchLMError, match="z_loss"):
        cfg_for(tiny_data, tmp_path, "c", model={"fused_loss": True}, optim={"z_loss": 1e-4})


def test_activation_checkpointing_follows_the_same_trajectory(tiny_data, tmp_path):
    kw = dict(steps=4, log_every=1, eval_every=0, grad_accum=2, model={"dropout_resid": 0.1})
    train(cfg_for(tiny_data, tmp_path, "a", **kw), progress=False)
    train(cfg_for(tiny_data, tmp_path, "b", activation_checkpointing=True, **kw), progress=False)
    assert losses(tmp_path / "b") == losses(tmp_path / "a")  # recomputation replays the dropout masks


@pytest.mark.slow
def test_compiled_training_follows_the_eager_trajectory(tiny_data, tmp_path):
    """torch.compile with inductor (about 30 s of compilation on a CPU), with activation checkpointing."""
    kw = dict(steps=4, log_every=1, eval_every=0, grad_accum=2)
    train(cfg_for(tiny_data, tmp_path, "a", **kw), progress=False)
    train(cfg_for(tiny_data, tmp_path, "b", compile=True, activation_checkpointing=True, **kw), progress=False)
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-4)


@pytest.mark.parametrize(
    "model",
    [{"dropout_resid": 0.1}, {"dropout_resid": 0.1, "dropout_attn": 0.1, "moe.num_experts": 4, "moe.top_k": 2}],
    ids=["dropout", "dropout_moe"],
)
def test_resume_continues_exactly(tiny_data, tmp_path, monkeypatch, model):
    """Resume is bit-exact with every RNG consumer on: residual and attention dropout, with MoE routing."""
    kw = dict(steps=12, log_every=1, eval_every=0, checkpoint_every=5, model=model)
    train(cfg_for(tiny_data, tmp_path, "full", **kw), progress=False)

    import scratchlm.train.schedules as schedules

    real = schedules.Schedule.step

    def interrupt(self, step):
        if step == 7:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(schedules.Schedule, "step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tiny_data, tmp_path, "cut", **kw), progress=False)
    monkeypatch.setattr(schedules.Schedule, "step", real)
    train(cfg_for(tiny_data, tmp_path, "cut", **kw), resume=True, progress=False)
    full, cut = losses(tmp_path / "full"), losses(tmp_path / "cut")
    # the cut run logged steps 1..7; resumed from step 5 it dropped the records of 6..7 and trained 6..12
    # again, so its log is one record per step (issue 12), equal to the uninterrupted run's
    records = map(json.loads, (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines())
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, 13))
    assert cut == full


def test_non_finite_loss_stops_with_clear_error(tiny_data, tmp_path):
    cfg = cfg_for(tiny_data, tmp_path, steps=30, eval_every=0, checkpoint_every=2, optim={"lr": 1e4, "grad_clip": 0.0})
    with pytest.raises(ScratchLMError, match="non-finite loss"):
        train(cfg, progress=False)
    assert (tmp_path / "run" / "checkpoints" / "latest.json").is_file()


def test_bad_input_fails_before_training(tiny_data, tmp_path):
    with pytest.raises(ScratchLMError, match="vocab"):
        train(cfg_for(tiny_data, tmp_path, model={"vocab_size": 100}), progress=False)
    with pytest.raises(ScratchLMError, match="not found"):
        train(cfg_for(tiny_data, tmp_path, data={"train": str(tmp_path / "nope.bin")}), progress=False)
    with pytest.raises(ScratchLMError, match="already holds a run"):
        train(cfg_for(tiny_data, tmp_path, steps=2, eval_every=0), progress=False)
        train(cfg_for(tiny_data, tmp_path, steps=2, eval_every=0), progress=False)
    with pytest.raises(ScratchLMError, match="unknown config key 'optim.learning_rate'"):
        cfg_for(tiny_data, tmp_path, optim={"learning_rate": 1.0})


def test_resume_with_incompatible_config(tiny_data, tmp_path):
    train(cfg_for(tiny_data, tmp_path, steps=4, eval_every=0), progress=False)
    with pytest.raises(ScratchLMError, match="model"):
        train(cfg_for(tiny_data, tmp_path, steps=8, eval_every=0, model={"d_model": 64}), resume=True, progress=False)


@pytest.mark.parametrize(
    "model",
    # (the balance loss is a product of per-process batch statistics, so it is left out of the comparison)
    [{}, {"moe.num_experts": 4, "moe.top_k": 1, "moe.aux_loss_coef": 0, "tie_embeddings": False, "fused_loss": True}],
    ids=["dense", "moe_untied_fused_loss"],
)
def test_ddp_two_processes_match_one(tiny_data, tmp_path, model):
    """2 gloo processes == 1 process; also with MoE and a fused head + loss outside DDP's forward."""
    common = dict(steps=5, log_every=1, eval_every=0, seq_len=32)
    single = cfg_for(tiny_data, tmp_path, "single", batch_size=8, model=model, **common)
    train(single, progress=False)
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    cmd += ["-m", "scratchlm", "train", "--preset", "debug", "--quiet"]
    sets = {
        "out_dir": str(tmp_path / "ddp"),
        "data.train": str(tiny_data["train"]),
        "data.valid": str(tiny_data["valid"]),
        "model.vocab_size": tiny_data["vocab_size"],
        "batch_size": 4,
        **common,
        **{f"model.{k}": v for k, v in model.items()},
    }
    for k, v in sets.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    torch.testing.assert_close(
        torch.tensor(losses(tmp_path / "ddp")), torch.tensor(losses(tmp_path / "single")), atol=1e-5, rtol=0
    )


def test_cli_train_resume_generate(tiny_data, tmp_path):
    run = tmp_path / "cli"
    base = [sys.executable, "-m", "scratchlm"]
    sets = [
        "--set",
        f"data.train={json.dumps(str(tiny_data['train']))}",
        "--set",
        f"model.vocab_size={tiny_data['vocab_size']}",
    ]
    r = subprocess.run([*base, "train", "--preset", "debug", "--out", str(run), "--quiet", *sets, "--set", "steps=4"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(
        [*base, "train", "--resume", str(run), "--set", "steps=6", "--quiet"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "6 steps" in r.stdout, r.stderr[-2000:]
    r = subprocess.run([*base, "generate", "--run", str(run), "--prompt", "the cat", "--max-new-tokens", "5"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("the cat"), r.stderr[-2000:]
    r = subprocess.run([*base, "train", "--resume", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert r.returncode == 1 and "no config.toml" in r.stderr


def test_final_checkpoint_is_saved_before_sampling(tiny_data, tmp_path, monkeypatch):
    """An error while sampling at the final evaluation must not cost the trained steps (issue 12, item 2)."""
    from scratchlm.train.checkpoint import find_checkpoint, read_checkpoint_meta
    from scratchlm.train.evaluator import Evaluator

    def broken(self, model, step):
        raise RuntimeError("sampling failed")

    monkeypatch.setattr(Evaluator, "samples", broken)
    cfg = cfg_for(tiny_data, tmp_path, steps=3, eval_every=0)
    with pytest.raises(RuntimeError, match="sampling failed"):
        train(cfg, progress=False)
    assert read_checkpoint_meta(find_checkpoint(tmp_path / "run"))["step"] == 3


def test_sample_longer_than_the_context_is_refused_before_training(tiny_data, tmp_path):
    with pytest.raises(ScratchLMError, match="sample_tokens must be in"):
        cfg_for(tiny_data, tmp_path, sample_tokens=10_000).validate()


def test_a_second_run_on_a_busy_run_directory_is_refused(tiny_data, tmp_path):
    """Two `scratchlm train` on one out_dir (issue 12, item 4): the second stops before touching anything."""
    from scratchlm.io import DirLock

    cfg = cfg_for(tiny_data, tmp_path, steps=2, eval_every=0)
    train(cfg, progress=False)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with DirLock(tmp_path / "run", "the first run"):  # what a running first process holds
        with pytest.raises(ScratchLMError, match="in use by another scratchlm process"):
            train(cfg, overwrite=True, progress=False)  # --force must not delete the first run's files
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    train(cfg_for(tiny_data, tmp_path, steps=3, eval_every=0), resume=True, progress=False)  # released after
