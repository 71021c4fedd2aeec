"""Run directories of the alignment trainers: a second run is refused, a failed save keeps the last checkpoint."""

import pytest
import torch

from scratchlm.align.run_dir import open_run_dir, pad_id, save_checkpoint
from scratchlm.errors import ScratchLMError


def test_second_run_refused_and_resume_allowed(tmp_path):
    out, ckpt = open_run_dir(tmp_path / "run", resume=False)
    (out / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ScratchLMError, match="already holds a run"):
        open_run_dir(out, resume=False)
    assert open_run_dir(out, resume=True) == (out, ckpt)


def test_a_save_that_dies_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, {"step": 1})

    def dies(obj, f):
        open(f, "wb").write(b"half")  # a partial write, then the process is gone
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(ckpt, {"step": 2})
    monkeypatch.undo()
    assert torch.load(ckpt, weights_only=True) == {"step": 1}


def test_pad_id_falls_back():
    class Chat:
        pad_id, eos_id = None, 7

    assert pad_id(Chat()) == 7
    Chat.eos_id = None
    assert pad_id(Chat()) == 0
