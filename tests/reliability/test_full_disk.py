"""Issue 12: a full output disk. Commands writing to a tiny tmpfs end with one line naming the file, leave no
half-written output (nor temp file) behind, and keep the previous output intact.

Needs root and a kernel that lets this process mount a tmpfs; skipped with the reason otherwise (an
unprivileged container, a non-Linux system).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_corpus import build_tiny_corpus

from scratchlm.io import named_write_errors
from scratchlm.tokenizer import Tokenizer
from scratchlm.train.checkpoint import find_checkpoint
from scratchlm.train.run import load_run

EOT = "<|endoftext|>"


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a directory on a fresh tmpfs of that size (e.g. "256k"); unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        if shutil.which("mount") is None:
            pytest.skip("no mount command here")
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"mount -t tmpfs is not permitted here: {r.stderr.decode(errors='replace').strip()}")
        mounted.append(d)
        return d

    try:
        yield mount
    finally:
        for d in reversed(mounted):
            if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(d)], capture_output=True)  # busy: detach it all the same


def scratchlm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scratchlm", *args], capture_output=True, text=True)


def one_line_no_space(r: subprocess.CompletedProcess, path: Path) -> None:
    assert r.returncode == 1, r.stderr[-3000:]
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr == f"scratchlm: error: No space left on device: {path}\n"


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` up to `leave` free bytes with one file."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_encode_to_a_full_disk(tmp_path, small_disk):
    disk = small_disk("256k")
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], [EOT])  # byte level: 2 bytes per input byte
    tok.save(tmp_path / "tok")
    (tmp_path / "small.txt").write_text(("hello world" + EOT) * 100)
    (tmp_path / "big.txt").write_text(("hello world " * 50 + EOT) * 400)  # ~245 KB -> ~490 KB of ids
    out = disk / "c.bin"
    enc = ["tokenizer", "encode", "--tokenizer", str(tmp_path / "tok"), "--quiet"]
    r = scratchlm(*enc, "--input", str(tmp_path / "small.txt"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    before = out.read_bytes(), (disk / "c.bin.json").read_bytes()

    r = scratchlm(*enc, "--input", str(tmp_path / "big.txt"), "--out", str(out), "--force")
    one_line_no_space(r, out)
    assert (out.read_bytes(), (disk / "c.bin.json").read_bytes()) == before  # the previous file, intact
    assert sorted(p.name for p in disk.iterdir()) == ["c.bin", "c.bin.json"]  # no temp file left

    r = scratchlm(*enc, "--input", str(tmp_path / "big.txt"), "--out", str(disk / "new.bin"))
    one_line_no_space(r, disk / "new.bin")
    assert sorted(p.name for p in disk.iterdir()) == ["c.bin", "c.bin.json"]  # no half-written new file


def test_checkpoint_save_to_a_full_disk(tmp_path, small_disk):
    (tmp_path / "data").mkdir()
    data = build_tiny_corpus(tmp_path / "data", train_docs=300, valid_docs=20)
    disk = small_disk("8m")
    run = disk / "run"
    sets = ["--set", f"data.train={json.dumps(str(data['train']))}", "--set", f"model.vocab_size={data['vocab_size']}"]
    r = scratchlm("train", "--preset", "debug", "--out", str(run), "--quiet", *sets,
                  "--set", "steps=1", "--set", "eval_every=0", "--set", "sample_tokens=0")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    step1 = run / "checkpoints" / "step_0000001"
    files_before = {p.name: p.read_bytes() for p in step1.iterdir()}
    latest_before = (run / "checkpoints" / "latest.json").read_bytes()

    filler = fill(disk, leave=32 << 10)  # room for the log lines, not for another checkpoint
    r = scratchlm("train", "--resume", str(run), "--set", "steps=2", "--quiet")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if not line.startswith("INFO ")]  # the log says "resumed"
    assert errors == [
        f"scratchlm: error: No space left on device: {run / 'checkpoints/step_0000002/model.safetensors'}"
    ]
    # Nothing half-written: no step 2, no temp directory; the pointer and step 1 are as they were and load.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step_0000001"]
    assert (run / "checkpoints" / "latest.json").read_bytes() == latest_before
    assert {p.name: p.read_bytes() for p in step1.iterdir()} == files_before
    assert find_checkpoint(run, "latest") == step1
    load_run(run, which="latest")  # the weights load (their sha256 in meta.json is checked)

    filler.unlink()  # space again: the run resumes from step 1 and finishes
    r = scratchlm("train", "--resume", str(run), "--set", "steps=2", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2


def _raise(e: Exception):
    raise e


def _torch_save_error():
    """What torch.save raises on a full disk: a RuntimeError whose context is the OSError of the write."""
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904


@pytest.mark.parametrize(
    "raise_it",
    [
        lambda: _raise(OSError(errno.ENOSPC, "No space left on device")),  # a plain write()
        _torch_save_error,
        lambda: _raise(ValueError("Error while serializing: I/O error: No space left on device (os error 28)")),
    ],
    ids=["write", "torch_save", "safetensors"],
)
def test_write_errors_name_the_file_without_a_tmpfs(tmp_path, raise_it):
    with pytest.raises(OSError) as e, named_write_errors(tmp_path / "out.bin"):
        raise_it()
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(tmp_path / "out.bin"))
    with pytest.raises(FileNotFoundError) as e, named_write_errors(tmp_path / "out.bin"):
        open(tmp_path / "missing")  # an error that names its own file is left alone
    assert e.value.filename == str(tmp_path / "missing")
    with pytest.raises(RuntimeError), named_write_errors(tmp_path / "out.bin"):
        raise RuntimeError("some other failure")  # not a write error: as it was


def test_metrics_log_on_a_full_disk_names_the_file(tmp_path):
    from scratchlm.train.metrics import MetricsLogger

    class FullFile:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    logger = MetricsLogger(tmp_path, {})
    logger.file.close()
    logger.file = FullFile()
    with pytest.raises(OSError) as e:
        logger.log({"kind": "train", "step": 1, "loss": 1.0})
    assert e.value.filename == str(tmp_path / "metrics.jsonl")
