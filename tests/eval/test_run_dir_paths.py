"""A run trained with relative data paths (as `scratchlm quickstart` writes them) loads and evaluates from
another working directory: its tokenizer is found under the directory the run was launched from."""

from __future__ import annotations

import json

from tiny_corpus import build_tiny_corpus

from scratchlm.cli import main
from scratchlm.config import load_config
from scratchlm.train.config import TrainConfig
from scratchlm.train.loop import train
from scratchlm.train.run import find_data_path, load_run


def test_relative_paths_run_loads_from_another_directory(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "runs" / "demo").mkdir(parents=True)
    data = build_tiny_corpus(project / "runs" / "demo", train_docs=60, valid_docs=4)
    monkeypatch.chdir(project)  # train from the project root with paths relative to it, as quickstart does
    base = {
        "out_dir": "runs/demo/run",
        "data": {"train": "runs/demo/train.bin", "valid": "runs/demo/valid.bin", "tokenizer": "runs/demo/tok"},
        "model": {"vocab_size": data["vocab_size"]},
    }
    train(load_config(TrainConfig, "train", "debug", ["steps=2", "eval_every=2"], base=base), progress=False)
    run = project / "runs" / "demo" / "run"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert find_data_path("runs/demo/tok", run) == project / "runs" / "demo" / "tok"
    assert find_data_path("runs/demo/missing", run) is None and find_data_path("", run) is None
    _, tok, _ = load_run(run)
    assert tok.vocab_size == data["vocab_size"]
    (elsewhere / "t.txt").write_text("the cat sat on a mat.")
    args = ["eval", "run", "--model", str(run), "--tasks", "bpb:t.txt", "--out", "out", "--no-progress"]
    assert main(args) == 0
    bpb = json.loads((elsewhere / "out" / "results.json").read_text())["tasks"]["bpb_t"]["bits_per_byte"]
    assert 0 < bpb < 30
