"""`scratchlm scaling sweep` end to end: 2 budgets x 2 sizes of a tiny model, then resume."""

from __future__ import annotations

import json

import pytest
from tiny_corpus import build_tiny_corpus

from scratchlm.cli import main


@pytest.fixture(scope="module")
def token_files(tmp_path_factory):
    """Tiny train/valid token files (vocab 300) of synthetic sentences."""
    return build_tiny_corpus(tmp_path_factory.mktemp("scaling_data"), train_docs=400, valid_docs=30)["dir"]


def test_sweep_trains_the_grid_collects_runs_and_resumes(token_files, tmp_path, capsys):
    # centre the slices on ~20k-parameter models (a fit.json's N_opt(C)): runs of ~5-30 steps
    centre = tmp_path / "centre.json"
    centre.write_text(json.dumps({"allocation": {"k_N": {"value": 2e4 / 2e8**0.5}, "a": {"value": 0.5}}}))
    out = tmp_path / "study"
    args = ["scaling", "sweep", "--budgets", "1e8", "3e8", "--sizes", "2", "--spread", "2", "--center", str(centre),
            "--preset", "debug", "--set", f"data.train={token_files / 'train.bin'}",
            "--set", f"data.valid={token_files / 'valid.bin'}", "--set", "model.vocab_size=300",
            "--set", "eval_every=0", "--set", "sample_tokens=0", "--set", "eval_tokens=1024",
            "--parallel", "2", "--bootstrap", "10", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "approach2: not fitted" in text and "approach3: not fitted: Approach 3 fits 5 parameters" in text

    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    plan = json.loads((out / "plan.json").read_text())["runs"]
    assert len(rows) == 4 and [r["budget"] for r in rows] == [1e8, 1e8, 3e8, 3e8]
    for row, p in zip(rows, plan):
        assert row["status"] == "done" and row["loss"] > 0 and row["loss_kind"] == "val"
        assert row["N"] == p["params"] and row["D"] == p["tokens"] and row["C"] == p["compute"]
        assert row["C_6ND"] == 6 * row["N"] * row["D"] and row["curve"]
        assert abs(row["C"] / row["budget"] - 1) < 0.1  # realised compute near the budget
    assert rows[0]["N"] < rows[1]["N"] and rows[0]["D"] > rows[1]["D"]  # one IsoFLOP line
    study = json.loads((out / "study.json").read_text())
    assert "2 usable IsoFLOP slices" in study["fits"]["approach2"]["error"]

    assert main(args) == 0  # resume: every run is already finished
    assert capsys.readouterr().out.count("done (cached)") == 4
