"""`scratchlm scaling fit` and `scratchlm scaling plan` end to end."""

from __future__ import annotations

import json

import pytest
from synth import isoflop_runs, scattered_runs

from scratchlm.cli import main


def write_runs(path, runs):
    with open(path, "w") as f:
        for name, n, d, c, loss in zip(runs.names, runs.n, runs.d, runs.c, runs.loss):
            f.write(json.dumps({"name": name, "params": n, "tokens": d, "flops": c, "loss": loss}) + "\n")
    return path


def test_fit_approach_2_writes_fit_json_and_plots(tmp_path, capsys):
    runs = write_runs(tmp_path / "runs.jsonl", isoflop_runs())
    out = tmp_path / "fit"
    code = main(
        [
            "scaling",
            "fit",
            "--runs",
            str(runs),
            "--approach",
            "2",
            "--bootstrap",
            "50",
            "--predict",
            "1e22",
            "--vocab",
            "32000",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads((out / "fit.json").read_text())
    assert data["format"] == "scratchlm.scaling.fit" and data["approach"] == 2
    assert data["allocation"]["a"]["se"] > 0 and len(data["allocation"]["a"]["ci95"]) == 2
    assert len(data["slices"]) == 4 and all(s["used"] for s in data["slices"])
    (p,) = data["predictions"]
    assert p["C"] == 1e22 and p["N_opt"]["ci95"][0] < p["N_opt"]["value"] < p["N_opt"]["ci95"][1]
    assert p["shape"]["n_layers"] >= 1 and p["preset"]["preset"]
    for png in ("allocation.png", "isoflops.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(data["plots"]) == ["allocation.png", "isoflops.png"]
    assert "N_opt" in capsys.readouterr().out


def test_fit_approach_3_and_1(tmp_path):
    runs = write_runs(tmp_path / "runs.jsonl", scattered_runs(40, noise=0.005))
    out = tmp_path / "fit3"
    assert (
        main(["scaling", "fit", "--runs", str(runs), "--bootstrap", "20", "--predict", "1e21", "--out", str(out)]) == 0
    )
    data = json.loads((out / "fit.json").read_text())
    assert set(data["params"]) == {"E", "A", "B", "alpha", "beta"} and data["params"]["alpha"]["se"] > 0
    assert "loss" in data["predictions"][0] and data["timings_s"]["fit_s"] > 0
    assert (out / "contours.png").is_file() and (out / "allocation.png").is_file()
    out1 = tmp_path / "fit1"
    assert main(["scaling", "fit", "--runs", str(runs), "--approach", "1", "--bins", "6", "--out", str(out1)]) == 0
    assert (out1 / "envelope.png").is_file() and json.loads((out1 / "fit.json").read_text())["envelope"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runs", "missing.jsonl"], "runs table not found"),
        (["--runs", "one_level.jsonl", "--approach", "2"], "needs IsoFLOP slices at >= 2 compute levels"),
        (["--runs", "one_level.jsonl", "--approach", "3", "--columns", "N"], "--columns entry 'N' must look like"),
        (["--runs", "one_level.jsonl", "--bootstrap", "-1", "--approach", "2"], "--bootstrap must be >= 0"),
    ],
)
def test_fit_bad_input_is_a_one_line_error(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    write_runs(tmp_path / "one_level.jsonl", isoflop_runs(budgets=(1e19,)))
    assert main(["scaling", "fit", *args, "--out", "o"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("scratchlm: error:") and message in err


def test_plan_prints_a_table_and_writes_a_loadable_sweep_spec(tmp_path, capsys):
    from scratchlm.train.sweep import load_spec

    spec = tmp_path / "iso.toml"
    code = main(
        [
            "scaling",
            "plan",
            "--budget",
            "1e12",
            "3e12",
            "--sizes",
            "3",
            "--preset",
            "debug",
            "--seq-len",
            "32",
            "--vocab",
            "300",
            "--set",
            "data.train=x.bin",
            "--spec-out",
            str(spec),
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "6 runs" in out and "tok/param" in out
    s = load_spec(spec)  # the sweep's own loader and key checks accept it
    assert len(s.points) == 6 and s.shared["data.train"] == "x.bin" and s.shared["model.d_ff"] == 0
    assert s.out_dir == tmp_path / "s" / "runs"
    assert s.points[0].keys() == {"model.d_model", "model.n_layers", "model.n_heads", "steps", "schedule.warmup_steps"}


def test_plan_and_sweep_print_the_resolved_study_config(tmp_path, capsys):
    """--preset / --set / --print-config are the shared config flags, applied to every run's training config."""
    args = ["--preset", "debug", "--set", "optim.lr=0.01", "--print-config", "--out", str(tmp_path / "s")]
    assert main(["scaling", "plan", "--budget", "1e12", "--vocab", "300", *args]) == 0
    out = capsys.readouterr().out
    assert 'train_preset = "debug"' in out and '"optim.lr" = 0.01' in out and '"model.vocab_size" = 300' in out
    assert main(["scaling", "sweep", "--budgets", "1e12", "--parallel", "2", *args]) == 0
    out = capsys.readouterr().out
    assert "parallel = 2" in out and '"optim.lr" = 0.01' in out
    assert not (tmp_path / "s").exists()  # printed, nothing planned or trained


def test_plan_uses_the_models_own_flops(tmp_path):
    from scratchlm.model.accounting import flops_per_token
    from scratchlm.scaling.config import StudyConfig
    from scratchlm.scaling.plan import plan_budget, train_config

    study = StudyConfig(
        budgets=[1e13], sizes=3, train_preset="debug", train_set={"seq_len": 64, "model.vocab_size": 512}
    )
    cfg = train_config(study)
    rows = plan_budget(1e13, study, cfg)
    assert len(rows) == 3 and rows[0].params < rows[1].params < rows[2].params
    for r in rows:
        shape = cfg.model.__class__(
            **{**cfg.model.__dict__, "d_model": r.d_model, "n_layers": r.n_layers, "n_heads": r.n_heads}
        )
        fpt = flops_per_token(shape, 64)["train"]
        assert r.train_flops_per_token == fpt and r.steps == round(1e13 / fpt / cfg.tokens_per_step)
        assert abs(r.compute / 1e13 - 1) < 0.5 / r.steps + 1e-9  # within half a step of the budget
