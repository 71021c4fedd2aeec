"""Issue 12 siblings: a killed `tokenizer encode` leaves nothing behind after the next run, and the checkpoint
functions take a file path (a file of a step directory, a pointer) or say clearly why they cannot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_write, sweep_stale_temps
from scratchlm.train.checkpoint import find_checkpoint, load_weights, save_checkpoint


@pytest.fixture(scope="module")
def tok_and_corpus(tmp_path_factory) -> tuple[Path, Path]:
    from scratchlm.tokenizer import Tokenizer, save_tokenizer, train_bpe

    root = tmp_path_factory.mktemp("enc")
    small = root / "small.txt"
    small.write_text("the cat sat on the mat, and the dog sat on the log. <|endoftext|>" * 100, encoding="utf-8")
    vocab, merges = train_bpe(small, 300, ["<|endoftext|>"], num_workers=1)
    save_tokenizer(Tokenizer(vocab, merges, ["<|endoftext|>"]), root / "tok")
    corpus = root / "corpus.txt"  # large enough that encoding with one worker takes a while
    words = [f"w{i % 9973}x{i % 13}" for i in range(40_000)]
    with open(corpus, "w", encoding="utf-8") as f:
        for k in range(60):
            f.write(" ".join(words[k:] + words[:k]) + " <|endoftext|>\n")
    return root / "tok", corpus


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temps_of_dead_writers_are_swept_and_live_ones_kept(tmp_path):
    import socket

    host = socket.gethostname().replace(".", "_")
    target = tmp_path / "out.bin"
    dead = tmp_path / f".out.bin.{host}-{dead_pid()}.abc123.tmp"
    live = tmp_path / f".out.bin.{host}-{os.getpid()}.def456.tmp"
    other_host = tmp_path / f".out.bin.elsewhere-{dead_pid()}.ghi789.tmp"
    unrelated = tmp_path / ".out.bin.old-style.tmp"
    for p in (dead, live, other_host, unrelated):
        p.write_bytes(b"partial")
    assert sweep_stale_temps(target) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, other_host, unrelated))
    live.unlink()
    with atomic_write(target) as f:  # atomic_write names its temp files so that they can be swept
        f.write(b"x")
        (mine,) = tmp_path.glob(f".out.bin.{host}-{os.getpid()}.*.tmp")
        assert sweep_stale_temps(target) == []  # its writer (this process) is alive
    assert not mine.exists() and target.read_bytes() == b"x"


def test_a_killed_encode_leaves_no_temp_file_after_the_next_run(tok_and_corpus, tmp_path):
    tok, corpus = tok_and_corpus
    out = tmp_path / "corpus.bin"
    argv = [sys.executable, "-m", "scratchlm", "tokenizer", "encode", "--tokenizer", str(tok), "--input", str(corpus)]
    argv += ["--out", str(out), "--workers", "1", "--chunk-mb", "0.01", "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    temps: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        if temps:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the encode finished before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert temps and all(p.exists() for p in temps) and not out.exists()  # what a kill leaves behind
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.bin", "corpus.bin.json"]


@pytest.fixture
def run_with_checkpoint(tmp_path) -> tuple[Path, Path, torch.nn.Module]:
    model = torch.nn.Linear(3, 2)
    step_dir = save_checkpoint(tmp_path / "run", 5, model)
    return tmp_path / "run", step_dir, model


def test_checkpoint_functions_take_a_file_of_a_step_directory_or_a_pointer(run_with_checkpoint):
    run, step_dir, model = run_with_checkpoint
    for path in (step_dir / "model.safetensors", step_dir / "meta.json", step_dir / "state.pt"):
        assert find_checkpoint(path) == step_dir
    assert find_checkpoint(run / "checkpoints" / "latest.json") == step_dir
    fresh = torch.nn.Linear(3, 2)
    assert load_weights(step_dir / "model.safetensors", fresh)["step"] == 5
    assert torch.equal(fresh.weight, model.weight)


def test_checkpoint_functions_given_another_file_say_so(run_with_checkpoint, tmp_path):
    some_file = tmp_path / "notes.txt"
    some_file.write_text("not a checkpoint\n")
    with pytest.raises(ScratchLMError, match=r"notes\.txt is a file, not a checkpoint: give a run directory"):
        find_checkpoint(some_file)
    with pytest.raises(ScratchLMError, match=r"notes\.txt is a file, not a checkpoint"):
        load_weights(some_file, torch.nn.Linear(3, 2))
    with pytest.raises(ScratchLMError, match=r"cannot save a checkpoint under .*notes\.txt: it is a file"):
        save_checkpoint(some_file, 1, torch.nn.Linear(3, 2))
    assert some_file.read_text() == "not a checkpoint\n"
