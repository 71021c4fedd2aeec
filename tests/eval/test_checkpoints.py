"""`scratchlm eval run --checkpoints`: every kept checkpoint of a tiny training run scored, next to the run's
validation curve; each step's figure equals scoring that checkpoint's weights directly."""

from __future__ import annotations

import json

import pytest
from tiny_corpus import build_tiny_corpus

from scratchlm.cli import main
from scratchlm.config import load_config
from scratchlm.train.config import TrainConfig
from scratchlm.train.loop import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The debug model after 4 steps, validated and checkpointed at steps 2 and 4."""
    d = tmp_path_factory.mktemp("ckpt")
    data = build_tiny_corpus(d, train_docs=200, valid_docs=10)
    base = {
        "out_dir": str(d / "run"),
        "data": {"train": str(data["train"]), "valid": str(data["valid"])},
        "model": {"vocab_size": data["vocab_size"]},
    }
    overrides = ["steps=4", "eval_every=2", "checkpoint_every=2", "keep_last=5"]
    train(load_config(TrainConfig, "train", "debug", overrides, base=base), progress=False)
    (d / "text.txt").write_text("the cat sat on a mat.<|endoftext|>a big dog ran on the log and then it was red.")
    return d


def test_checkpoints_scored_next_to_the_validation_curve(tiny_run, tmp_path, capsys):
    from scratchlm.eval.bpb import bits_per_byte
    from scratchlm.model.model_dir import load_model
    from scratchlm.train.checkpoint import load_weights

    run, text, out = tiny_run / "run", tiny_run / "text.txt", tmp_path / "out"
    args = ["eval", "run", "--model", str(run), "--checkpoints", "--tasks", f"bpb:{text}", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    assert "| step | val_loss | val_bpb | bpb_text (bits_per_byte) |" in capsys.readouterr().out
    summary = json.loads((out / "checkpoints.json").read_text())
    assert [p["step"] for p in summary["checkpoints"]] == [2, 4]
    assert [r["step"] for r in summary["validation"]] == [2, 4] and len(summary["train"]) >= 1
    assert (out / "checkpoints.png").stat().st_size > 1000 and (
        out / "steps" / "step_0000002" / "results.json"
    ).is_file()
    model, chat = load_model(str(run))
    for p in summary["checkpoints"]:
        load_weights(run / "checkpoints" / p["dir"], model)
        want = bits_per_byte(model, chat, text.read_text(), context=model.config.context_length)["bits_per_byte"]
        assert p["tasks"]["bpb_text"]["value"] == pytest.approx(want, rel=1e-6)
    assert (
        summary["checkpoints"][0]["tasks"]["bpb_text"]["value"]
        != summary["checkpoints"][1]["tasks"]["bpb_text"]["value"]
    )
    assert "![curves](checkpoints.png)" in (out / "checkpoints.md").read_text()


def test_checkpoints_bad_input(tiny_run, tmp_path, capsys):
    from scratchlm.model.model_dir import load_model, save_model_dir

    model, chat = load_model(str(tiny_run / "run"))
    mdir = save_model_dir(model, chat, tmp_path / "model")
    base = ["eval", "run", "--checkpoints", "--tasks", "bpb:owt_mini", "--out", str(tmp_path / "o")]
    assert main([*base, "--model", str(mdir)]) == 1
    assert "needs a training run directory" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "run",
                "--checkpoints",
                "--model",
                str(tiny_run / "run"),
                "--tasks",
                "nope",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_mmlu_cloze_end_to_end_reports_acc_norm_by_subject(tiny_run, tmp_path):
    from scratchlm.eval.run import SHARED

    if not (SHARED / "instruct" / "mmlu" / "val").is_dir():
        pytest.skip("../shared/data/instruct/mmlu not found (only on the project's machines)")
    out = tmp_path / "cloze"
    args = [
        "eval",
        "run",
        "--model",
        str(tiny_run / "run"),
        "--tasks",
        "mmlu_cloze:abstract_algebra+elementary_mathematics",
        "--limit",
        "2",
    ]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    task = json.loads((out / "results.json").read_text())["tasks"]["mmlu_cloze_abstract_algebra_elementary_mathematics"]
    assert task["metric"] == "acc_norm" and task["n"] == 4 and task["num_fewshot"] == 0
    assert set(task["groups"]) == {"abstract_algebra", "elementary_mathematics"} and all(
        "acc_norm" in g for g in task["groups"].values()
    )
    samples = [
        json.loads(x)
        for x in (out / "samples" / "mmlu_cloze_abstract_algebra_elementary_mathematics.jsonl").read_text().splitlines()
    ]
    assert task["acc_norm"] == pytest.approx(sum(s["acc_norm"] for s in samples) / 4)
    assert "| group | acc_norm | n |" in (out / "report.md").read_text()
