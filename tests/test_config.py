from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from scratchlm.config import all_keys, load_config, parse_overrides, to_toml
from scratchlm.errors import ScratchLMError
from scratchlm.tokenizer.config import TokenizerTrainConfig


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class Run:
    name: str = "run"
    steps: int = 10
    compile: bool = False
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    seed: int | None = None
    optim: Optim = field(default_factory=Optim)

    def validate(self):
        if self.steps < 1:
            raise ScratchLMError("steps must be >= 1")


def test_overrides_typed_and_nested():
    cfg = load_config(Run, overrides=["optim.lr=3e-4", "steps=20", "compile=true", "norm=layernorm", "name=123"])
    assert cfg.optim.lr == 3e-4 and cfg.steps == 20 and cfg.compile is True and cfg.norm == "layernorm"
    assert cfg.name == "123"  # a string field keeps the raw text
    assert cfg.optim.betas == [0.9, 0.95]
    cfg = load_config(Run, overrides=["optim.betas=[0.8, 0.99]", "seed=3"])
    assert cfg.optim.betas == [0.8, 0.99] and cfg.seed == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "did you mean 'optim.lr'"),
        ("stpes=3", "did you mean 'steps'"),
        ("steps=abc", "steps: expected an integer"),
        ("steps=1.5", "steps: expected an integer"),
        ("norm=rmsnrom", "did you mean 'rmsnorm'"),
        ("compile=maybe", "expected true or false"),
        ("steps", "must look like key=value"),
        ("steps=0", "steps must be >= 1"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ScratchLMError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(Run, overrides=[override])


def test_preset_file_and_unknown_key_in_file(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("steps = 5\n[optim]\nlr = 0.1\n")
    cfg = load_config(Run, preset=str(good), overrides=["steps=7"])
    assert cfg.steps == 7 and cfg.optim.lr == 0.1
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(ScratchLMError, match="bad.toml: unknown config key 'optim.learning_rate'"):
        load_config(Run, preset=str(bad))
    broken = tmp_path / "broken.toml"
    broken.write_text("steps = = 3\n")
    with pytest.raises(ScratchLMError, match="not valid TOML"):
        load_config(Run, preset=str(broken))


def test_named_presets_and_unknown_preset():
    cfg = load_config(TokenizerTrainConfig, "tokenizer", "owt")
    assert cfg.vocab_size == 32000
    with pytest.raises(ScratchLMError, match="unknown tokenizer preset 'owtt' \\(did you mean 'owt'"):
        load_config(TokenizerTrainConfig, "tokenizer", "owtt")


def test_keys_listing_and_toml_roundtrip(tmp_path):
    assert "optim.lr" in all_keys(Run)
    cfg = load_config(Run, overrides=["optim.lr=0.5"])
    path = tmp_path / "snap.toml"
    path.write_text(to_toml(cfg))
    assert load_config(Run, preset=str(path)) == cfg


def test_parse_overrides_rejects_key_under_scalar():
    with pytest.raises(ScratchLMError, match="unknown config key 'steps.x'"):
        parse_overrides(Run, ["steps.x=1"])
