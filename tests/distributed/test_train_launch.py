"""`torchrun -m scratchlm train --set parallel.dp_shard=2` end to end: 2 FSDP2 processes follow the 1-process
trajectory on the same global batch, write the usual checkpoint (gathered full state), and the run resumes in
one process, then under tensor parallel (other layouts), on the same trajectory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from multiproc import free_port

from scratchlm.config import load_config
from scratchlm.train.config import TrainConfig
from scratchlm.train.loop import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="gloo multiprocess tests run on Linux"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tiny_corpus import build_tiny_corpus

    return build_tiny_corpus(tmp_path_factory.mktemp("tiny_data"))


def _losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r.get("kind") == "train"]


def test_fsdp_launch_matches_one_process_and_resumes_in_one(data, tmp_path):
    sets = {
        "data.train": str(data["train"]), "data.valid": str(data["valid"]), "model.vocab_size": data["vocab_size"],
        "steps": 4, "log_every": 1, "eval_every": 0, "seq_len": 32, "model.n_kv_heads": 2,
    }  # fmt: skip

    def launch(**over) -> None:
        port = str(free_port())
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
        cmd += ["-m", "scratchlm", "train", "--preset", "debug", "--quiet"]
        for k, v in {**sets, **over}.items():
            cmd += ["--set", f"{k}={json.dumps(v)}"]
        if over.get("steps", 0) > 4:
            cmd += ["--resume", over["out_dir"]]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    def cfg(**over) -> TrainConfig:
        return load_config(TrainConfig, "train", "debug", [f"{k}={json.dumps(v)}" for k, v in {**sets, **over}.items()])

    fsdp, single = str(tmp_path / "fsdp"), str(tmp_path / "single")
    launch(out_dir=fsdp, batch_size=4, **{"parallel.dp_shard": 2})
    train(cfg(out_dir=single, batch_size=8), progress=False)
    torch.testing.assert_close(
        torch.tensor(_losses(tmp_path / "fsdp")), torch.tensor(_losses(tmp_path / "single")), atol=1e-5, rtol=0
    )
    # the FSDP run's checkpoint (gathered by both ranks, written by rank 0) resumes in one process, then under
    # tensor parallel, on the same global batch, and continues as the single-process run does
    train(cfg(out_dir=fsdp, batch_size=8, steps=5), resume=True, progress=False)
    launch(out_dir=fsdp, batch_size=8, steps=6, **{"parallel.tp": 2})
    for steps in (5, 6):
        train(cfg(out_dir=single, batch_size=8, steps=steps), resume=True, progress=False)
    assert len(_losses(tmp_path / "fsdp")) == 6
    torch.testing.assert_close(
        torch.tensor(_losses(tmp_path / "fsdp")), torch.tensor(_losses(tmp_path / "single")), atol=1e-5, rtol=0
    )


def _summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_context_parallel_launch_matches_one_process(data, tmp_path):
    """cp = 2: every rank trains on its two chunks of each sequence (ring attention, global positions); losses,
    validation loss and the final weights equal one process on the whole sequences."""
    sets = {
        "data.train": str(data["train"]), "data.valid": str(data["valid"]), "model.vocab_size": data["vocab_size"],
        "steps": 3, "log_every": 1, "eval_every": 0, "seq_len": 32, "model.n_kv_heads": 2, "batch_size": 4,
    }  # fmt: skip
    cp = str(tmp_path / "cp")
    port = str(free_port())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    cmd += ["-m", "scratchlm", "train", "--preset", "debug", "--quiet", "--set", f"out_dir={json.dumps(cp)}"]
    for k, v in {**sets, "parallel.cp": 2}.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    single = str(tmp_path / "single")
    over = [f"{k}={json.dumps(v)}" for k, v in {**sets, "out_dir": single}.items()]
    train(load_config(TrainConfig, "train", "debug", over), progress=False)
    torch.testing.assert_close(
        torch.tensor(_losses(tmp_path / "cp")), torch.tensor(_losses(tmp_path / "single")), atol=1e-5, rtol=0
    )
    a, b = _summary(tmp_path / "cp"), _summary(tmp_path / "single")
    assert a["val_tokens"] == b["val_tokens"] > 0
    assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)


@pytest.mark.parametrize("schedule, dp", [("1f1b", 1), ("gpipe", 1), ("1f1b", 2)])
def test_pipeline_launch_matches_one_process_and_resumes_in_one(data, tmp_path, schedule, dp):
    """pp = 2 (x dp_replicate = dp): the step's 2 micro-batches flow through 2 stages; losses, gradient norms and
    validation loss equal one process, and the checkpoint (every stage's weights and optimizer state gathered)
    resumes in one."""
    sets = {
        "data.train": str(data["train"]), "data.valid": str(data["valid"]), "model.vocab_size": data["vocab_size"],
        "steps": 3, "log_every": 1, "eval_every": 2, "seq_len": 32, "model.n_kv_heads": 2, "batch_size": 2,
        "grad_accum": 2, "model.tie_embeddings": False, "optim.grad_clip": 0.05,
    }  # fmt: skip
    pp = str(tmp_path / "pp")
    port = str(free_port())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(2 * dp), "--master_port", port]
    cmd += ["-m", "scratchlm", "train", "--preset", "debug", "--quiet", "--set", f"out_dir={json.dumps(pp)}"]
    for k, v in {**sets, "batch_size": 2 // dp, "parallel.pp": 2, "parallel.pp_schedule": schedule}.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    def cfg(**over) -> TrainConfig:
        return load_config(TrainConfig, "train", "debug", [f"{k}={json.dumps(v)}" for k, v in {**sets, **over}.items()])

    single = str(tmp_path / "single")
    train(cfg(out_dir=single), progress=False)

    def records(run, kind, key):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return torch.tensor([r[key] for r in map(json.loads, lines) if r.get("kind") == kind])

    for kind, key in (("train", "loss"), ("train", "grad_norm"), ("eval", "val_loss")):
        torch.testing.assert_close(records("pp", kind, key), records("single", kind, key), atol=1e-5, rtol=0)
    assert records("single", "train", "grad_norm").min() > 0.05  # clipping was active: the cross-stage norm counts
    # the gathered checkpoint continues in one process exactly as the one-process run does
    train(cfg(out_dir=pp, steps=5), resume=True, progress=False)
    train(cfg(out_dir=single, steps=5), resume=True, progress=False)
    torch.testing.assert_close(records("pp", "train", "loss"), records("single", "train", "loss"), atol=1e-5, rtol=0)
