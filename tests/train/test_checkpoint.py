"""Checkpoints: exact round trips (model, optimizer, schedule, data position, RNGs), retention,
atomicity, integrity checks and resume-config checks."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open

import scratchlm.train.checkpoint as ckpt
from scratchlm.config import from_dict, to_dict
from scratchlm.errors import ScratchLMError
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.train.checkpoint import (
    MODEL_FILE,
    check_resume_config,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from scratchlm.train.config import TrainConfig

BASE = dict(vocab_size=61, context_length=16, d_model=16, n_layers=2, n_heads=2)


class Schedule:
    """Stand-in for an lr schedule: anything with state_dict / load_state_dict."""

    def __init__(self, step: int = 0):
        self.step = step

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


def make(seed: int = 0, **kw) -> tuple[TransformerLM, torch.optim.AdamW]:
    torch.manual_seed(seed)
    model = TransformerLM(from_dict(ModelConfig, {**BASE, **kw}))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_step(model, opt, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, BASE["vocab_size"], (2, 8), generator=g)
    loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()


def config(**kw) -> dict:
    return to_dict(from_dict(TrainConfig, {"model": BASE, **kw}))


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_restores_everything(tmp_path, tied):
    model, opt = make(0, tie_embeddings=tied)
    train_step(model, opt)
    path = save_checkpoint(
        tmp_path, 1, model, opt, Schedule(7), {"next_index": 5}, config(), {"val_loss": torch.tensor(2.5)}
    )
    assert path == tmp_path / "checkpoints" / "step_0000001"
    with safe_open(path / MODEL_FILE, "pt") as f:
        assert ("head.weight" in f.keys()) == (not tied)  # tied weights stored once
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == "scratchlm-checkpoint" and meta["step"] == 1 and meta["metrics"] == {"val_loss": 2.5}
    assert meta["files"][MODEL_FILE]["bytes"] == (path / MODEL_FILE).stat().st_size

    model2, opt2 = make(1, tie_embeddings=tied)
    sched2 = Schedule()
    info = load_checkpoint(tmp_path, model2, opt2, sched2)
    assert info["step"] == 1 and info["data_state"] == {"next_index": 5} and sched2.step == 7
    assert info["config"] == config() and info["metrics"]["val_loss"] == 2.5 and info["path"] == path
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    assert (model2.head.weight is model2.embed.weight) == tied
    # The restored optimizer continues exactly as the original one.
    train_step(model, opt, seed=1)
    train_step(model2, opt2, seed=1)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_rng_states_restored(tmp_path):
    model, _ = make()
    save_checkpoint(tmp_path, 1, model)
    expected = (torch.rand(3), np.random.rand(2), random.random())
    _ = torch.rand(5), np.random.rand(5), random.random()  # move every generator on
    load_checkpoint(tmp_path, make(1)[0], restore_rng=True)
    got = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_load_weights_into_a_compiled_style_wrapper(tmp_path):
    model, _ = make()
    save_checkpoint(tmp_path, 3, model)

    class Wrapper(torch.nn.Module):  # what torch.compile returns: the module under `_orig_mod`
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    other = make(1)[0]
    meta = load_weights(tmp_path / "checkpoints" / "step_0000003", Wrapper(other))
    assert meta["step"] == 3 and torch.equal(other.embed.weight, model.embed.weight)


def test_keep_last_and_best(tmp_path):
    model, opt = make()
    for step in range(1, 6):
        save_checkpoint(tmp_path, step * 10, model, opt, metrics={"val_loss": 5 - step}, keep_last=2, is_best=step == 2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000020", "step_0000040", "step_0000050"]
    root = tmp_path / "checkpoints"
    assert json.loads((root / "latest.json").read_text())["step"] == 50
    assert json.loads((root / "best.json").read_text())["dir"] == "step_0000020"
    assert load_checkpoint(tmp_path, make(1)[0], which="best")["step"] == 20
    assert load_checkpoint(root, make(1)[0])["step"] == 50  # the checkpoints/ directory works too
    save_checkpoint(tmp_path, 60, model, keep_last=1, is_best=True)  # the old best may go now
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000060"]


def test_failed_save_leaves_no_trace(tmp_path, monkeypatch):
    model, opt = make()
    save_checkpoint(tmp_path, 1, model, opt)
    root = tmp_path / "checkpoints"
    before = sorted(os.listdir(root)), (root / "latest.json").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, model, opt, is_best=True)
    assert (sorted(os.listdir(root)), (root / "latest.json").read_bytes()) == before
    monkeypatch.undo()
    assert load_checkpoint(tmp_path, make(1)[0])["step"] == 1


def test_damaged_files_are_named(tmp_path):
    model, opt = make()
    path = save_checkpoint(tmp_path, 1, model, opt)
    f = path / MODEL_FILE
    data = f.read_bytes()
    f.write_bytes(data[:-100])
    with pytest.raises(ScratchLMError, match=r"model\.safetensors has .* truncated"):
        load_checkpoint(tmp_path, make()[0])
    f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ScratchLMError, match=r"model\.safetensors is corrupt"):
        load_checkpoint(tmp_path, make()[0])
    (path / "state.pt").unlink()
    with pytest.raises(ScratchLMError, match=r"missing: .*state\.pt"):
        load_checkpoint(path, make()[0], verify=False)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ScratchLMError, match="version 99"):
        load_checkpoint(path, make()[0])
    with pytest.raises(ScratchLMError, match="no checkpoint in"):
        load_checkpoint(tmp_path / "checkpoints" / "..", make()[0], which="best")
    with pytest.raises(ScratchLMError, match="not found"):
        load_checkpoint(tmp_path / "nope", make()[0])


def test_model_mismatch_lists_the_keys(tmp_path):
    model, _ = make(tie_embeddings=False)
    save_checkpoint(tmp_path, 1, model)
    with pytest.raises(ScratchLMError, match=r"missing keys: blocks\.2\..*shape mismatches"):
        load_checkpoint(tmp_path, make(n_layers=3, vocab_size=62)[0])
    with pytest.raises(ScratchLMError, match="ties head.weight to embed.weight"):
        load_checkpoint(tmp_path, make(tie_embeddings=True)[0])
    save_checkpoint(tmp_path, 2, model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ScratchLMError, match="optimizer state"):
        load_checkpoint(tmp_path, make(tie_embeddings=False)[0], make(tie_embeddings=False, n_layers=1)[1])


def test_resume_config_check(tmp_path, monkeypatch):
    saved = config(steps=100, data={"train": "data/train.bin"})
    check_resume_config(saved, saved)
    check_resume_config(saved, config(steps=500, eval_every=7, log_every=3, time_limit_s=60.0, data=saved["data"]))
    with pytest.raises(ScratchLMError, match=r"model\.n_layers \(2 -> 3\).*seq_len \(0 -> 8\)") as e:
        check_resume_config(saved, config(steps=100, seq_len=8, model={**BASE, "n_layers": 3}, data=saved["data"]))
    assert "steps" not in str(e.value).split("free to change")[0]
    with pytest.raises(ScratchLMError, match="batch_size"):
        check_resume_config(saved, {**saved, "batch_size": 32})
    check_resume_config(saved, {**saved, "batch_size": 32}, allow=("batch_size",))
    # The same data file named two ways is the same file.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.bin").write_bytes(b"\0\0")
    monkeypatch.chdir(tmp_path)
    check_resume_config(saved, {**saved, "data": {**saved["data"], "train": str(tmp_path / "data" / "train.bin")}})
    with pytest.raises(ScratchLMError, match="data.train"):
        check_resume_config(saved, {**saved, "data": {**saved["data"], "train": "data/other.bin"}})


def _tiny_model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(vocab_size=32, context_length=8, d_model=16, n_layers=1, n_heads=2))


def test_a_replacement_killed_midway_loses_nothing(tmp_path, monkeypatch):
    """Fault injection (issue 12, item 3): re-saving a step is killed after the old copy was moved aside and
    before the new one was renamed in. The next reader puts the old copy back; a later save does not delete it."""
    import scratchlm.io as io_mod

    model = _tiny_model()
    ckpt.save_checkpoint(tmp_path, 2, model)
    ckpt.save_checkpoint(tmp_path, 4, model)
    real_replace = os.replace

    def killed_on_rename_in(src, dst):  # the old copy went aside already; the new one never arrives
        if str(src).endswith(".tmp") and os.path.basename(dst) == "step_0000004":
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", killed_on_rename_in)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 4, model)
    monkeypatch.setattr(io_mod.os, "replace", real_replace)
    root = tmp_path / "checkpoints"
    assert not (root / "step_0000004").exists() and list(root.glob(".step_0000004.*.old"))
    found = ckpt.find_checkpoint(tmp_path)  # the reader recovers the moved-aside copy
    assert found == root / "step_0000004" and ckpt.read_checkpoint_meta(found)["step"] == 4
    ckpt.load_checkpoint(tmp_path, _tiny_model())


def test_a_pointer_to_a_missing_step_falls_back_to_the_newest_intact_one(tmp_path, caplog):
    import shutil

    model = _tiny_model()
    for step in (2, 4, 6):
        ckpt.save_checkpoint(tmp_path, step, model, keep_last=3)
    shutil.rmtree(tmp_path / "checkpoints" / "step_0000006")
    with caplog.at_level("WARNING"):
        assert ckpt.find_checkpoint(tmp_path).name == "step_0000004"
    assert "newest intact" in caplog.text
    (tmp_path / "checkpoints" / "latest.json").write_text("{not json")  # a garbage pointer: the same fallback
    assert ckpt.find_checkpoint(tmp_path).name == "step_0000004"
    (tmp_path / "checkpoints" / "latest.json").write_text('{"dir": 123}')
    assert ckpt.find_checkpoint(tmp_path).name == "step_0000004"
    shutil.rmtree(tmp_path / "checkpoints" / "step_0000004")
    shutil.rmtree(tmp_path / "checkpoints" / "step_0000002")
    with pytest.raises(ScratchLMError, match="no other checkpoint is intact"):
        ckpt.find_checkpoint(tmp_path)


def test_prune_puts_back_an_interrupted_replacement_instead_of_deleting_it(tmp_path):
    model = _tiny_model()
    ckpt.save_checkpoint(tmp_path, 2, model)
    root = tmp_path / "checkpoints"
    aside = root / ".step_0000002.x1.old"
    aside.mkdir()
    os.replace(root / "step_0000002", aside / "dir")  # the state a kill mid-replacement leaves
    ckpt.save_checkpoint(tmp_path, 3, model, keep_last=2)  # its cleanup must not delete the only copy of step 2
    assert (root / "step_0000002" / "meta.json").is_file() and not aside.exists()
