"""`scratchlm compress`: quantise / prune a model directory into a new one that every command loads; bad
input is refused before anything is written."""

from __future__ import annotations

import torch

from scratchlm.cli import main
from scratchlm.compress.quant import Int4Linear, Int8Linear
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.model.model_dir import load_model, save_model_dir
from scratchlm.tokenizer.chat import ChatTokenizer
from scratchlm.tokenizer.tokenizer import Tokenizer


def model_dir(tmp_path):
    torch.manual_seed(0)
    chat = ChatTokenizer.plain(Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]))
    cfg = ModelConfig(vocab_size=chat.tokenizer.vocab_size, context_length=64, d_model=64, n_layers=2, n_heads=4,
                      n_kv_heads=2, d_ff=128)  # fmt: skip
    save_model_dir(TransformerLM(cfg).eval(), chat, tmp_path / "m")
    calib = tmp_path / "calib.txt"
    calib.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    return tmp_path / "m", calib


def test_quantize_and_prune_write_loadable_models(tmp_path, capsys):
    src, calib = model_dir(tmp_path)
    x = torch.randint(0, 257, (1, 10))
    ref = load_model(src)[0](x)
    assert main(["compress", "quantize", "--model", str(src), "--bits", "8", "--out", str(tmp_path / "q8")]) == 0
    args = ["--bits", "4", "--group-size", "32", "--method", "gptq", "--calib", str(calib), "--calib-seqs", "4"]
    assert (
        main(["compress", "quantize", "--model", str(src), *args, "--calib-len", "32", "--out", str(tmp_path / "g4")])
        == 0
    )
    q8, g4 = load_model(tmp_path / "q8")[0], load_model(tmp_path / "g4")[0]
    assert isinstance(q8.blocks["0"].ffn.f.down, Int8Linear) and isinstance(g4.blocks["1"].attn.f.q_proj, Int4Linear)
    assert (q8(x) - ref).abs().max() < 0.05 * ref.abs().max()
    assert main(["compress", "prune", "--model", str(src), "--sparsity", "0.5", "--out", str(tmp_path / "p")]) == 0
    assert "block-linear sparsity 50.0%" in capsys.readouterr().out
    w = load_model(tmp_path / "p")[0].blocks["0"].ffn.f.up.weight
    assert (w == 0).float().mean().item() == 0.5
    args = ["--calib", str(calib), "--calib-seqs", "2", "--calib-len", "32", "--d-ff", "64", "--n-layers", "1"]
    assert main(["compress", "prune-structured", "--model", str(src), *args, "--out", str(tmp_path / "s")]) == 0
    small = load_model(tmp_path / "s")[0]
    assert small.config.d_ff == 64 and small.config.n_layers == 1


def test_bad_input_writes_nothing(tmp_path, capsys):
    src, calib = model_dir(tmp_path)
    out = tmp_path / "out"
    bad = [
        ["quantize", "--method", "gptq", "--bits", "4", "--group-size", "32"],  # no calibration data
        ["quantize", "--bits", "4", "--group-size", "48"],  # does not divide 64
        ["quantize", "--method", "gptq", "--calib", str(tmp_path / "missing.txt")],
        ["prune", "--sparsity", "1.5"],
        ["prune"],  # neither --sparsity nor --pattern
    ]
    for argv in bad:
        assert main(["compress", *argv, "--model", str(src), "--out", str(out)]) != 0, argv
        assert not out.exists(), argv
    err = capsys.readouterr().err
    assert "needs --calib" in err and "divide the input dimension 64" in err and "missing.txt" in err
    main(["compress", "quantize", "--model", str(src), "--out", str(out)])
    assert main(["compress", "quantize", "--model", str(src), "--out", str(out)]) != 0  # exists, no --overwrite
