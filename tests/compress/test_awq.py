"""AWQ: folding the scales leaves the model's function unchanged; the scales beat round to nearest where a few
input channels are large; a whole model stays closer to fp32 than with round to nearest; the result saves and
reloads as plain int4 modules; bad input is refused before anything changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchlm.compress.awq import (
    InputStats,
    fake_quant,
    fold,
    gqa_index,
    output_mse,
    scale_groups,
    search_clip,
    search_scale,
)
from scratchlm.compress.quant import Int4Linear, QuantConfig, quantize_model
from scratchlm.errors import InvalidArgument
from scratchlm.model import ModelConfig, TransformerLM


def tiny(seed: int = 0, **kw) -> TransformerLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=64, context_length=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return TransformerLM(cfg).eval()


@torch.no_grad()
def with_outliers(model: TransformerLM, factor: float = 20.0) -> TransformerLM:
    """A few input channels of every block linear made large, as trained LLMs have them (random init has none)."""
    for block in model.blocks.values():
        for norm in (block.attn.norm_in, block.ffn.norm_in):
            norm.weight[:4] *= factor
        block.ffn.f.up.weight[:8] *= factor  # and a few of down's inputs
    return model


def test_gqa_index():
    assert gqa_index(4, 2, 3).tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5]
    assert gqa_index(2, 2, 2).tolist() == [0, 1, 2, 3]  # multi-head: o's input j reads v's row j


@pytest.mark.parametrize(
    "kw",
    [{}, {"norm": "layernorm", "bias": True}, {"qkv_bias": True, "qk_norm": True}, {"n_kv_heads": 1}],
    ids=["rmsnorm-gqa", "layernorm-bias", "qkv-bias-qk-norm", "mqa"],
)
def test_folding_scales_without_quantising_keeps_the_logits(kw):
    model = tiny(1, **kw)
    x = torch.randint(0, 64, (2, 16))
    ref = model(x)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in model.blocks.values():
            groups = scale_groups(block)
            assert [g.name for g in groups] == ["attn.qkv", "attn.o", "mlp.gate_up", "mlp.down"]
            for g in groups:
                fold(g, torch.exp(torch.randn(g.prev.weight.shape[0], generator=gen)))  # scales in ~[0.1, 10]
    assert (model(x) - ref).abs().max().item() < 1e-5
    assert not torch.equal(model.blocks["0"].attn.norm_in.weight, torch.ones(64))  # something was folded


def test_groups_without_a_fold_are_skipped_and_still_quantised():
    dense, post = tiny(mlp="gelu"), tiny(norm_placement="post")
    assert [g.name for g in scale_groups(dense.blocks["0"])] == ["attn.qkv", "attn.o"]  # gelu between up, down
    assert [g.name for g in scale_groups(post.blocks["0"])] == ["attn.o", "mlp.down"]  # no norm before q/k/v
    calib = torch.randint(0, 64, (2, 32))
    for model in (dense, post):
        quantize_model(model, QuantConfig(bits=4, group_size=32, method="awq"), calib=calib)
        modules = [m for n, m in model.named_modules() if n.startswith("blocks.")]
        assert not any(isinstance(m, torch.nn.Linear) for m in modules)
        assert sum(isinstance(m, Int4Linear) for m in modules) == 2 * (6 if model is dense else 7)


def test_output_mse_from_the_gram_matrix_equals_the_direct_error():
    torch.manual_seed(0)
    x, dw = torch.randn(300, 48) * torch.rand(48) * 5, torch.randn(20, 48) * 0.01
    direct = (x @ dw.T).pow(2).mean().item()
    assert output_mse(InputStats.of(x), dw) == pytest.approx(direct, rel=1e-4)
    s = torch.rand(48) + 0.5
    assert output_mse(InputStats.of(x).scaled(s), dw) == pytest.approx(output_mse(InputStats.of(x / s), dw), rel=1e-4)


def heavy_inputs(rows: int, k: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(rows, k, generator=gen)
    x[:, :4] *= 30  # four large-magnitude input channels
    return x


def test_awq_beats_round_to_nearest_on_a_layer_with_large_input_channels():
    gen = torch.Generator().manual_seed(0)
    k, n, g = 128, 64, 32
    w = torch.randn(n, k, generator=gen) * 0.05
    calib, held = heavy_inputs(2048, k, gen), heavy_inputs(2048, k, gen)
    cfg = QuantConfig(bits=4, group_size=g, method="awq")
    s, alpha, errs = search_scale(InputStats.of(calib), w, cfg)
    assert len(errs) == cfg.awq_grid and alpha > 0
    ref = held @ w.T
    rtn = (Int4Linear.from_weight(w, g)(held) - ref).pow(2).mean().item()
    awq = (Int4Linear.from_weight(w * s, g)(held / s) - ref).pow(2).mean().item()  # the real module, held-out rows
    assert errs[0] == pytest.approx(output_mse(InputStats.of(calib), fake_quant(w, cfg) - w), rel=1e-6)  # alpha 0
    assert awq < 0.5 * rtn, (awq, rtn)


def test_clipping_lowers_the_output_error():
    """Shrinking a group's range trades clipping its extremes for a finer grid: ~5% less output error on
    Gaussian weights (held-out inputs), in line with what the AWQ paper's clipping adds."""
    gen = torch.Generator().manual_seed(1)
    k, n, g = 128, 64, 32
    w = torch.randn(n, k, generator=gen) * 0.02
    calib, held = torch.randn(2048, k, generator=gen), torch.randn(2048, k, generator=gen)
    cfg = QuantConfig(bits=4, group_size=g, method="awq")
    clipped = search_clip(InputStats.of(calib), w, cfg)
    assert (clipped.abs() <= w.abs()).all() and not torch.equal(clipped, w)
    err = {name: output_mse(InputStats.of(held), fake_quant(v, cfg) - w) for name, v in [("rtn", w), ("clip", clipped)]}
    assert err["clip"] < 0.97 * err["rtn"], err


def kl_to(ref_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """KL(fp || quantised) per token: the whole model's next-token distributions against fp32's."""
    return F.kl_div(logits.log_softmax(-1), ref_logits.log_softmax(-1), log_target=True, reduction="sum").item() / (
        ref_logits.shape[0] * ref_logits.shape[1]
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_awq_model_stays_closer_to_fp32_than_round_to_nearest(seed):
    """On a random tiny model the loss itself moves by noise (~1e-3 nats either way), so the check is the
    KL divergence of the next-token distributions to the fp32 model's on held-out ids."""
    calib, held = torch.randint(0, 64, (8, 64)), torch.randint(0, 64, (8, 64))
    ref = with_outliers(tiny(seed))(held)
    kl = {}
    for method in ("rtn", "awq"):
        model = quantize_model(with_outliers(tiny(seed)), QuantConfig(bits=4, group_size=32, method=method), calib)
        kl[method] = kl_to(ref, model(held))
    assert kl["awq"] < 0.7 * kl["rtn"], kl


def test_saved_awq_model_reloads_identically(tmp_path):
    from scratchlm.model.model_dir import load_model, save_model_dir
    from scratchlm.tokenizer.chat import ChatTokenizer
    from scratchlm.tokenizer.tokenizer import Tokenizer

    chat = ChatTokenizer.plain(Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]))
    model = with_outliers(tiny(5, vocab_size=chat.tokenizer.vocab_size))
    quantize_model(model, QuantConfig(bits=4, group_size=32, method="awq"), calib=torch.randint(0, 257, (4, 32)))
    save_model_dir(model, chat, tmp_path / "q")
    back, _ = load_model(tmp_path / "q")
    x = torch.randint(0, 257, (2, 12))
    assert torch.equal(back(x), model(x)) and back.quantization == model.quantization
    assert back.quantization["method"] == "awq" and isinstance(back.blocks["1"].ffn.f.down, Int4Linear)
    norm = back.blocks["0"].attn.norm_in.weight  # the folded gains travel in the state dict
    assert torch.equal(norm, model.blocks["0"].attn.norm_in.weight)


def test_bad_input_is_refused_and_nothing_changes():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 64, (2, 16))
    with pytest.raises(InvalidArgument, match="AWQ needs calibration"):
        quantize_model(model, QuantConfig(bits=4, group_size=32, method="awq"))
    with pytest.raises(InvalidArgument, match="AWQ needs calibration"):
        quantize_model(model, QuantConfig(bits=4, group_size=32, method="awq"), calib=ids[0])  # not (S, T)
    with pytest.raises(InvalidArgument, match="divide the input dimension 64"):
        quantize_model(model, QuantConfig(bits=4, group_size=48, method="awq"), calib=ids)
    with pytest.raises(InvalidArgument, match="awq_grid"):
        quantize_model(model, QuantConfig(bits=4, group_size=32, method="awq", awq_grid=1), calib=ids)
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in before)


def test_cli_awq_writes_a_loadable_model_and_refuses_bad_calibration(tmp_path, capsys):
    from scratchlm.cli import main
    from scratchlm.model.model_dir import load_model, save_model_dir
    from scratchlm.tokenizer.chat import ChatTokenizer
    from scratchlm.tokenizer.tokenizer import Tokenizer

    chat = ChatTokenizer.plain(Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]))
    save_model_dir(tiny(3, vocab_size=chat.tokenizer.vocab_size), chat, tmp_path / "m")
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20)  # 900 byte tokens
    src, out = ["--model", str(tmp_path / "m")], tmp_path / "out"
    awq = ["compress", "quantize", *src, "--bits", "4", "--group-size", "32", "--method", "awq"]
    assert main([*awq, "--out", str(out)]) != 0  # no --calib
    assert main([*awq, "--calib", str(text), "--calib-seqs", "30", "--calib-len", "64", "--out", str(out)]) != 0
    assert not out.exists()
    err = capsys.readouterr().err
    assert "--method awq needs --calib" in err and "fewer than the 30 x 64" in err
    assert main([*awq, "--calib", str(text), "--calib-seqs", "4", "--calib-len", "32", "--out", str(out)]) == 0
    back, _ = load_model(out)
    assert back.quantization["method"] == "awq" and isinstance(back.blocks["0"].attn.f.o_proj, Int4Linear)
