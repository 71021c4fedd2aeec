"""`scratchlm model info`: help, the printed table for presets, config errors naming the key."""

from __future__ import annotations

import pytest

from scratchlm.cli import main
from scratchlm.config import list_presets, load_config
from scratchlm.model.config import ModelConfig


@pytest.mark.parametrize("path", [["model"], ["model", "info"]], ids=" ".join)
def test_help(path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: scratchlm model" in out
    if path[-1] == "info":
        assert "--seq-len" in out and "--batch" in out and "gpt2-small" in out  # presets listed


def test_info_debug(capsys):
    assert main(["model", "info", "--preset", "debug"]) == 0
    out = capsys.readouterr().out
    for text in ("parameters", "total", "139,584", "FLOPs per token (seq_len 64", "6N", "optimizer state"):
        assert text in out, text
    assert "per token (full)" in out and "active per token" not in out


def test_info_gpt2_small(capsys):
    args = ["model", "info", "--preset", "gpt2-small", "--seq-len", "512", "--batch", "4", "--dtype", "fp32"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "124,439,808" in out and "seq_len 512" in out and "batch 4 x 512 tokens, fp32" in out
    assert "72.00 KiB" in out  # KV cache per token: 2 * 12 layers * 768 * 4 bytes


def test_info_moe_shows_active_params_and_overrides_apply(capsys):
    assert main(["model", "info", "--preset", "moe-debug", "--set", "moe.top_k=1"]) == 0
    out = capsys.readouterr().out
    assert "experts" in out and "router" in out and "shared_expert" in out and "active per token" in out


def test_print_config(capsys):
    assert main(["model", "info", "--preset", "debug", "--set", "n_layers=3", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "n_layers = 3" in out and "d_model = 64" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "debug", "--set", "d_modle=32"], "unknown config key 'd_modle' (did you mean 'd_model'?)"),
        (["--preset", "debug", "--set", "moe.top_kk=1"], "did you mean 'moe.top_k'?"),
        (["--preset", "gpt2-smal"], "unknown model preset 'gpt2-smal' (did you mean 'gpt2-small'?)"),
        (["--preset", "debug", "--set", "n_heads=5"], "n_heads=5 does not divide d_model=64"),
        (["--preset", "debug", "--seq-len", "0"], "--seq-len and --batch must be >= 1"),
    ],
)
def test_errors_are_one_line(args, message, capsys):
    assert main(["model", "info", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scratchlm: error: ") and message in err[0], err


def test_every_preset_loads_and_builds_on_meta():
    from scratchlm.model.accounting import count_params

    names = list_presets("model")
    assert {"debug", "moe-debug", "tinystories-17m", "gpt2-small", "llama-style-60m", "llama-style-150m"} <= set(names)
    expected = {"debug": 139_584, "tinystories-17m": 22_696_448, "gpt2-small": 124_439_808}
    for name in names:
        counts = count_params(load_config(ModelConfig, "model", name))
        assert counts["total"] == expected.get(name, counts["total"]) and counts["total"] > 0
