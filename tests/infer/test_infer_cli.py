"""`scratchlm infer generate` and its older spelling `scratchlm generate`: one verb, the same text."""

from __future__ import annotations

import pytest
from tiny_corpus import build_tiny_corpus

from scratchlm.cli import build_parser, main
from scratchlm.config import load_config
from scratchlm.train.config import TrainConfig
from scratchlm.train.loop import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory of the debug model after 2 steps on a small synthetic corpus."""
    d = tmp_path_factory.mktemp("infer")
    data = build_tiny_corpus(d, train_docs=200, valid_docs=10)
    base = {
        "out_dir": str(d / "run"),
        "data": {"train": str(data["train"]), "valid": str(data["valid"])},
        "model": {"vocab_size": data["vocab_size"]},
    }
    train(load_config(TrainConfig, "train", "debug", ["steps=2", "eval_every=0"], base=base), progress=False)
    return d / "run"


def test_both_spellings_are_one_verb():
    parser = build_parser()
    new = parser.parse_args(["infer", "generate", "--run", "r", "--top-k", "5"])
    old = parser.parse_args(["generate", "--run", "r", "--top-k", "5"])
    assert new.func is old.func
    assert {k: v for k, v in vars(new).items() if k not in ("stage", "verb")} == {
        k: v for k, v in vars(old).items() if k != "stage"
    }


@pytest.mark.parametrize("prompt", ["the cat", ""], ids=["prompt", "start-of-document"])
def test_both_spellings_print_the_same_text(tiny_run, capsys, prompt):
    args = ["--run", str(tiny_run), "--prompt", prompt, "--max-new-tokens", "8", "--seed", "3"]
    assert main(["infer", "generate", *args]) == 0
    new = capsys.readouterr().out
    assert main(["generate", *args]) == 0
    old = capsys.readouterr().out
    assert new == old and new.startswith(prompt) and len(new) > len(prompt) + 1


@pytest.mark.parametrize(
    "flag, value, message",
    [("--max-new-tokens", "-5", "max_new_tokens must be >= 0"), ("--top-p", "5", "top_p must be in (0, 1]")],
)
def test_out_of_range_settings_are_one_line_errors(tiny_run, capsys, flag, value, message):
    """Issue 12, item 11: a bad generation setting ends in `scratchlm: error: ...`, exit 1, no traceback."""
    assert main(["infer", "generate", "--run", str(tiny_run), "--max-new-tokens", "3", flag, value]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scratchlm: error: ") and message in err[0]
