"""The runs table: formats, column names, derived C / D, sweep results, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from scratchlm.errors import ScratchLMError
from scratchlm.scaling.runs import load_runs


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_with_short_names_derives_compute(tmp_path):
    p = write_jsonl(
        tmp_path / "runs.jsonl", [{"n": 1e6, "d": 2e7, "loss": 3.0}, {"N": 2e6, "D": 1e7, "final_loss": 2.9}]
    )
    # "n" and "N" are the same column (case-insensitive); first row's "loss" column is used, the
    # second row has none: NaN -> excluded
    runs = load_runs(p)
    assert runs.columns["C"] == "derived: C = 6 N D" and len(runs) == 1
    assert runs.c[0] == 6 * 1e6 * 2e7


def test_csv_with_chinchilla_columns_derives_tokens(tmp_path):
    p = tmp_path / "runs.csv"
    p.write_text("x,Model Size,Training FLOP,loss\n1,1e8,6e18,3.1\n2,2e8,6e18,3.0\n")
    runs = load_runs(p)
    assert runs.columns == {"N": "Model Size", "C": "Training FLOP", "loss": "loss", "D": "derived: D = C / (6 N)"}
    assert np.allclose(runs.d, [1e10, 5e9])


def test_cs336_isoflop_columns_need_no_mapping(tmp_path):
    """CS336's IsoFLOP data names compute `compute_budget` (issue 12): read without --columns."""
    import json

    rows = [
        {"parameters": 1e8, "compute_budget": 6e18, "final_loss": 3.1},
        {"parameters": 2e8, "compute_budget": 6e18, "final_loss": 3.0},
    ]
    p = tmp_path / "isoflops_curves.json"
    p.write_text(json.dumps(rows))
    runs = load_runs(p)
    assert runs.columns["C"] == "compute_budget" and np.allclose(runs.d, [1e10, 5e9])


def test_explicit_column_mapping(tmp_path):
    rows = [{"nonemb": 5e5, "params": 1e6, "tokens": 1e7, "best_val_loss": 3.3, "val_loss": 3.4} for _ in range(2)]
    runs = load_runs(write_jsonl(tmp_path / "r.jsonl", rows), columns={"N": "nonemb", "loss": "best_val_loss"})
    assert runs.n[0] == 5e5 and runs.loss[0] == 3.3
    with pytest.raises(ScratchLMError, match="column 'nope' \\(given for N\\) is not in the runs table"):
        load_runs(tmp_path / "r.jsonl", columns={"N": "nope"})
    with pytest.raises(ScratchLMError, match="unknown field"):
        load_runs(tmp_path / "r.jsonl", columns={"Q": "params"})


def test_sweep_results_json_maps_and_skips_failed_runs(tmp_path, caplog):
    rows = [
        {
            "name": "d_model=32_steps=10",
            "status": "done",
            "params": 30000,
            "tokens": 40960,
            "train_flops_per_token": 2e5,
            "train_flops": 8.2e9,
            "final_loss": 5.0,
            "val_loss": 4.8,
            "best_val_loss": 4.8,
        },
        {"name": "d_model=64_steps=5", "status": "failed", "error": "CUDA out of memory"},
        {
            "name": "d_model=48_steps=8",
            "status": "done (cached)",
            "params": 50000,
            "tokens": 30000,
            "train_flops_per_token": 3e5,
            "train_flops": 9e9,
            "final_loss": float("nan"),
            "val_loss": None,
        },
    ]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    with caplog.at_level(logging.WARNING):
        runs = load_runs(tmp_path)  # a sweep directory
    assert runs.names == ["d_model=32_steps=10"]
    assert runs.columns["N"] == "params" and runs.columns["C"] == "train_flops" and runs.columns["loss"] == "val_loss"
    assert runs.loss[0] == 4.8 and runs.c[0] == 8.2e9
    assert [e["name"] for e in runs.excluded] == ["d_model=64_steps=5", "d_model=48_steps=8"]
    assert "run d_model=64_steps=5 excluded: failed run (CUDA out of memory)" in caplog.text
    assert "run d_model=48_steps=8 excluded: loss is None" in caplog.text


def test_curves_are_read(tmp_path):
    rows = [
        {"N": 1e6, "D": 1e7, "loss": 3.0, "curve": [[1e5, 6.0], [1e6, 4.0], [0, 9.0]]},
        {"N": 1e6, "D": 1e7, "loss": 3.0, "curve_tokens": [1e5], "curve_loss": [5.0]},
    ]
    runs = load_runs(write_jsonl(tmp_path / "r.jsonl", rows))
    assert runs.curves[0].tolist() == [[1e5, 6.0], [1e6, 4.0]]  # non-positive tokens dropped
    assert runs.curves[1].tolist() == [[1e5, 5.0]]


def test_drop_highest_loss(tmp_path):
    rows = [{"N": 1e6 * (i + 1), "D": 1e7, "loss": 3.0 + i} for i in range(6)]
    runs = load_runs(write_jsonl(tmp_path / "r.jsonl", rows), drop_highest_loss=2)
    assert runs.loss.tolist() == [3.0, 4.0, 5.0, 6.0] and len(runs.excluded) == 2


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"N": -5, "D": 1e7, "loss": 3.0}, "run row 1: N = -5; N must be a positive number"),
        ({"N": 1e6, "D": 0, "loss": 3.0}, "run row 1: D = 0; D must be a positive number"),
        ({"N": 1e6, "D": 1e7, "loss": -1.0}, "loss must be a positive number"),
        ({"N": "big", "D": 1e7, "loss": 3.0}, "run row 1: N = 'big' is not a number"),
        ({"D": 1e7, "loss": 3.0}, "no N column"),
        ({"N": 1e6, "loss": 3.0}, "needs a compute \\(C\\) or a tokens \\(D\\) column"),
        ({"N": 1e6, "D": 1e7, "loss": float("nan")}, "no usable runs \\(1 excluded\\)"),
    ],
)
def test_bad_rows_are_clear_errors(tmp_path, row, message):
    with pytest.raises(ScratchLMError, match=message):
        load_runs(write_jsonl(tmp_path / "r.jsonl", [row]))


def test_bad_files(tmp_path):
    with pytest.raises(ScratchLMError, match="runs table not found"):
        load_runs(tmp_path / "missing.jsonl")
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(ScratchLMError, match="unknown format '.txt'"):
        load_runs(tmp_path / "r.txt")
    (tmp_path / "r.json").write_text("{bad")
    with pytest.raises(ScratchLMError, match="not valid JSON"):
        load_runs(tmp_path / "r.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScratchLMError, match="holds no runs table"):
        load_runs(tmp_path / "empty")
