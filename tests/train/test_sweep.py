from __future__ import annotations

import json

import pytest

from scratchlm.errors import ScratchLMError
from scratchlm.train.sweep import load_spec, run_sweep


def write_spec(tmp_path, tiny_data, body: str):
    spec = tmp_path / "sweep.toml"
    shared = (
        f'"data.train" = {json.dumps(str(tiny_data["train"]))}\n"data.valid" = {json.dumps(str(tiny_data["valid"]))}\n'
        f'"model.vocab_size" = {tiny_data["vocab_size"]}\n"steps" = 6\n"eval_every" = 0\n"sample_tokens" = 0\n'
    )
    spec.write_text(f'preset = "debug"\nout_dir = "{tmp_path / "sweep"}"\n[set]\n{shared}\n{body}')
    return spec


def test_sweep_over_two_points_writes_its_table_and_resumes(tiny_data, tmp_path):
    spec = load_spec(write_spec(tmp_path, tiny_data, '[grid]\n"optim.lr" = [1e-3, 1e-2]\n'))
    rows = run_sweep(spec, progress=False)
    assert [r["status"] for r in rows] == ["done", "done"] and all(r["val_loss"] > 0 for r in rows)
    out = tmp_path / "sweep"
    for name in ("results.csv", "results.md", "results.json", "results.png"):
        assert (out / name).is_file()
    assert "lr=0.01" in (out / "results.md").read_text()
    again = run_sweep(spec, progress=False)  # finished points are skipped
    assert [r["status"] for r in again] == ["done (cached)"] * 2


def test_failed_runs_are_reported(tiny_data, tmp_path):
    spec = load_spec(write_spec(tmp_path, tiny_data, '[[points]]\n"optim.lr" = 1e-3\n[[points]]\n"seq_len" = 100000\n'))
    rows = run_sweep(spec, progress=False)
    assert rows[0]["status"] == "done" and rows[1]["status"] == "failed" and rows[1]["error"]
    assert "1 failed" in (tmp_path / "sweep" / "results.md").read_text()


def test_bad_specs(tiny_data, tmp_path):
    with pytest.raises(ScratchLMError, match="unknown config key 'optim.lrr'"):
        load_spec(write_spec(tmp_path, tiny_data, '[grid]\n"optim.lrr" = [1e-3]\n'))
    with pytest.raises(ScratchLMError, match="either a \\[grid\\]"):
        load_spec(write_spec(tmp_path, tiny_data, ""))
