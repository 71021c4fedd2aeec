"""The CLI: --help on every stage and verb, one-line errors with a non-zero exit code."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from scratchlm.cli import build_parser, main


def _all_command_paths(parser: argparse.ArgumentParser, prefix=()):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_command_paths(sub, (*prefix, name))


PATHS = list(_all_command_paths(build_parser()))


def test_every_stage_and_verb_is_reachable():
    assert ("tokenizer", "train") in PATHS and ("tokenizer", "encode") in PATHS and ("data", "download") in PATHS


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "scratchlm")
def test_help_everywhere(path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    assert "usage: scratchlm" in capsys.readouterr().out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scratchlm", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["tokenizer", "train", "--set", "vocab_sise=300", "--out", "x"], "did you mean 'vocab_size'"),
        (["tokenizer", "train", "--preset", "defualt", "--out", "x"], "unknown tokenizer preset 'defualt'"),
        (["tokenizer", "train", "--input", "/nonexistent.txt", "--out", "x"], "corpus file not found"),
        (["tokenizer", "info", "/nonexistent"], "tokenizer not found"),
    ],
)
def test_errors_are_one_line_with_exit_code_1(args, message):
    r = run_cli(*args)
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("scratchlm: error: ") and message in lines[-1], r.stderr


def test_train_encode_decode_end_to_end(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat.<|endoftext|>the dog sat on the log.<|endoftext|>" * 200)
    tok = tmp_path / "tok"
    r = run_cli("tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(tok), "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(tok), "--quiet")
    assert r.returncode == 1 and "already exists" in r.stderr  # refuses before doing the work
    r = run_cli("tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(corpus / "t"))
    assert r.returncode == 1 and "cannot write the tokenizer directory" in r.stderr and "merges" not in r.stdout
    r = run_cli(
        "tokenizer", "encode", "--tokenizer", str(tok), "--input", str(corpus), "--out", str(tmp_path / "c.bin")
    )
    assert r.returncode == 0 and "400 documents" in r.stdout, r.stderr + r.stdout
    for flag, value in (("--chunk-mb", "0"), ("--chunk-mb", "-1"), ("--workers", "-2")):  # no empty file, no traceback
        r = run_cli(
            "tokenizer",
            "encode",
            "--tokenizer",
            str(tok),
            "--input",
            str(corpus),
            "--out",
            str(tmp_path / "z.bin"),
            flag,
            value,
        )
        assert r.returncode == 1 and r.stderr.startswith("scratchlm: error: ") and not (tmp_path / "z.bin").exists()
    bad_out = str(corpus / "c.bin")  # a path through a regular file: an OSError, reported in one line
    r = run_cli("tokenizer", "encode", "--tokenizer", str(tok), "--input", str(corpus), "--out", bad_out)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("scratchlm: error: "), r.stderr
    r = run_cli("tokenizer", "decode", "--tokenizer", str(tok), "--input", str(tmp_path / "c.bin"), "--count", "12")
    assert r.returncode == 0 and r.stdout.startswith("the cat sat on the mat.<|endoftext|>")
    r = run_cli("tokenizer", "show", "--tokenizer", str(tok), "the cat")
    assert r.returncode == 0 and "' cat'" in r.stdout
    r = run_cli("tokenizer", "decode", "--tokenizer", str(tok), "--input", str(tmp_path / "c.bin"), "--count", "-5")
    assert r.returncode == 1 and "must be >= 0" in r.stderr
    r = run_cli("tokenizer", "decode", "--tokenizer", str(tok), "--ids", "1,99999")
    assert r.returncode == 1 and "outside the vocabulary" in r.stderr
    r = run_cli("tokenizer", "train", "--print-config", "--set", "vocab_size=512")
    assert r.returncode == 0 and "vocab_size = 512" in r.stdout
