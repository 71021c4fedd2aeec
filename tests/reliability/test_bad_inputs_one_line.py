"""Issue 12, item 12 and its siblings: bad command-line inputs are one-line errors, never tracebacks.

Each case runs the real CLI in a subprocess (argv as bytes where the point is undecodable bytes) and checks
the exit status, that stderr is exactly one `scratchlm: error: ...` line, and what it names.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fasttext")  # data classify's language id


def scratchlm(*argv: str | bytes, cwd: Path) -> subprocess.CompletedProcess:
    args = [os.fsencode(a) if isinstance(a, str) else a for a in argv]
    return subprocess.run([os.fsencode(sys.executable), b"-m", b"scratchlm", *args], capture_output=True, cwd=cwd)


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 1, err
    assert err.startswith("scratchlm: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from scratchlm.tokenizer import Tokenizer, save_tokenizer, train_bpe

    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.txt"
    corpus.write_text("the cat sat on the mat. <|endoftext|>" * 200, encoding="utf-8")
    vocab, merges = train_bpe(corpus, 280, ["<|endoftext|>"], num_workers=1)
    save_tokenizer(Tokenizer(vocab, merges, ["<|endoftext|>"]), root / "tok")
    return root / "tok"


def test_tokenizer_show_with_a_non_utf8_argument(tokenizer_dir, tmp_path):
    r = scratchlm("tokenizer", "show", "--tokenizer", str(tokenizer_dir), b"caf\xe9 \xff", cwd=tmp_path)
    one_line_error(r, "the text to show is not valid UTF-8 (byte 0xe9 at position 3)")
    ok = scratchlm("tokenizer", "show", "--tokenizer", str(tokenizer_dir), "café", cwd=tmp_path)
    assert ok.returncode == 0 and b"tokens" in ok.stdout


def test_data_classify_with_a_non_utf8_argument(tmp_path):
    r = scratchlm("data", "classify", b"caf\xe9 au lait", cwd=tmp_path)
    one_line_error(r, "the text to classify is not valid UTF-8 (byte 0xe9 at position 3)")


def test_data_classify_at_file_missing_or_a_directory(tmp_path):
    (tmp_path / "a_dir").mkdir()
    one_line_error(
        scratchlm("data", "classify", "@missing.txt", cwd=tmp_path), "text file (@path) not found: missing.txt"
    )
    one_line_error(scratchlm("data", "classify", "@a_dir", cwd=tmp_path), "text file (@path) a_dir is a directory")
    (tmp_path / "empty.txt").write_bytes(b"")
    one_line_error(scratchlm("data", "classify", "@empty.txt", cwd=tmp_path), "empty.txt is empty")
    (tmp_path / "doc.txt").write_bytes(b"A short English sentence about a cat.\n")
    ok = scratchlm("data", "classify", "@doc.txt", cwd=tmp_path)
    assert ok.returncode == 0 and b"language    en" in ok.stdout


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("runs.csv", bytes(range(256)) * 8, "runs table runs.csv is not a text file (not UTF-8"),
        ("runs.jsonl", b"\xff\xfe" + "N".encode("utf-16-le") * 10, "runs table runs.jsonl is not a text file"),
        ("runs.json", b"\x89PNG\r\n\x1a\n" + bytes(100), "runs table runs.json is not a text file"),
        ("runs.csv", b"N,D,loss\n1e6\x00,2e7,3.1\n", "runs table runs.csv is not a text file (it holds NUL bytes)"),
    ],
    ids=["csv", "jsonl", "png-as-json", "nul-bytes"],
)
def test_a_binary_runs_table(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    r = scratchlm("scaling", "fit", "--runs", name, "--out", "fit", cwd=tmp_path)
    one_line_error(r, message)
    assert not (tmp_path / "fit").exists()
