"""Gemma 3 (text): a tiny random transformers Gemma3ForCausalLM (sliding and global layers, window shorter
than the sequence, GQA, head_dim != d_model / heads, query_pre_attn_scalar != head_dim) loads into
TransformerLM with the same logits, through the KV cache too, generates the same greedy tokens, saves
back to a checkpoint transformers reads with the same logits; config spellings of transformers 4.x and
5.x, the "gemma3" alias and the 270M preset agree; unsupported configs fail with errors naming the key."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from scratchlm.config import load_config
from scratchlm.errors import ScratchLMError
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.model.generate import generate
from scratchlm.model.hf import config_from_hf, model_from_hf

transformers = pytest.importorskip("transformers", reason="the Gemma 3 tests compare against transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

V, T, WINDOW = 101, 24, 5
TINY = dict(
    vocab_size=V,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA
    head_dim=16,  # 4 * 16 = 64 != 48
    query_pre_attn_scalar=24,  # scores * 24**-0.5, not head_dim**-0.5
    sliding_window=WINDOW,
    sliding_window_pattern=3,  # S S L S S L
    max_position_embeddings=64,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)
IDS = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))


def hf_gemma(**changes):
    """Random weights, every one moved off its init (Gemma's norm weights start at 0, the identity)."""
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(**{**TINY, **changes}, attn_implementation="eager")
    model = transformers.Gemma3ForCausalLM(config).float()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def hf_logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def ours_logits(model, ids=IDS, **kw):
    with torch.no_grad():
        return model.eval()(ids, **kw)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def ref():
    return hf_gemma()


@pytest.fixture(scope="module")
def hf_dir(ref, tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma3") / "hf"
    ref.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ours(hf_dir):
    return TransformerLM.from_hf(hf_dir)


def test_config_maps_every_gemma_switch(ours):
    cfg = ours.config
    assert (cfg.layer_pattern, cfg.window) == ("SSL", WINDOW)
    assert (cfg.rope_theta, cfg.rope_local_theta) == (1_000_000.0, 10_000.0)
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.attn_scale_dim, cfg.norm_eps) == (2, 16, 24, 1e-6)
    assert (cfg.mlp, cfg.norm, cfg.norm_placement, cfg.qk_norm) == ("geglu_tanh", "rmsnorm", "sandwich", True)
    assert cfg.scale_embeddings and cfg.tie_embeddings


def test_logits_match_transformers(ref, ours):
    assert T > WINDOW
    assert max_diff(ours_logits(ours), hf_logits(ref)) < 1e-4


def test_every_switch_matters(ref, ours, hf_dir):
    """Each Gemma switch changes the logits here, so the parity above pins every one of them (an
    off-by-one window, the global RoPE base on local layers, the default attention scale, ...)."""
    expected = hf_logits(ref)
    hf = json.loads((hf_dir / "config.json").read_text())
    tensors = safetensors_torch.load_file(hf_dir / "model.safetensors")
    for change in (
        dict(sliding_window=WINDOW - 1),
        dict(sliding_window=WINDOW + 1),
        dict(query_pre_attn_scalar=16),
        dict(rope_parameters={"sliding_attention": {"rope_theta": 1e6}, "full_attention": {"rope_theta": 1e6}}),
        dict(hidden_activation="gelu"),
    ):
        other = model_from_hf({**hf, **change}, tensors, "test")
        assert max_diff(ours_logits(other), expected) > 1e-3, change
    for switch, off in (("scale_embeddings", False), ("rope_local_theta", 0.0)):
        cfg = ModelConfig(**{**vars(ours.config), switch: off})
        other = TransformerLM(cfg)
        other.load_state_dict(ours.state_dict())
        assert max_diff(ours_logits(other), expected) > 1e-3, switch


def test_kv_cache_matches_transformers(ref, ours):
    """Prefill 7 tokens, then one token at a time past the window: the rolling caches of the sliding
    layers wrap around, and every step's logits are transformers' full-sequence logits."""
    expected = hf_logits(ref)
    cache = ours.new_cache(batch=2, max_len=T)
    steps = [ours_logits(ours, IDS[:, :7], cache=cache)]
    steps += [ours_logits(ours, IDS[:, t : t + 1], cache=cache) for t in range(7, T)]
    assert max_diff(torch.cat(steps, dim=1), expected) < 1e-4


def test_greedy_generation_matches_transformers(tmp_path):
    """16 greedy tokens after a 6-token prompt, past the window. Untied: a tiny random tied model just
    repeats one token, which would hide a cache bug."""
    ref = hf_gemma(tie_word_embeddings=False)
    ref.save_pretrained(tmp_path / "hf")
    ours = TransformerLM.from_hf(tmp_path / "hf")
    prompt = IDS[:1, :6]
    with torch.no_grad():
        theirs = ref.generate(prompt, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    mine = generate(ours, prompt, 16, temperature=0)
    assert theirs.shape == (1, 6 + 16)
    assert mine.tolist() == theirs.tolist()
    assert len(set(mine[0, 6:].tolist())) > 2  # a continuation that exercises the model
    assert generate(ours, prompt, 16, temperature=0, use_cache=False).tolist() == theirs.tolist()


def test_save_hf_roundtrip(ref, ours, tmp_path):
    assert ours.save_hf(tmp_path / "back") == "gemma3_text"  # picked by itself: no other format fits
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    assert type(back).__name__ == "Gemma3ForCausalLM"
    assert max_diff(hf_logits(back), hf_logits(ref)) < 1e-4
    for name, p in ref.named_parameters():  # the norm weights come back as Gemma's w of (1 + w)
        assert max_diff(back.get_parameter(name), p) < 1e-6, name
    assert TransformerLM.from_hf(tmp_path / "back").config == ours.config


def test_native_model_saves_as_gemma3(tmp_path):
    """A Gemma-shaped model trained in scratchlm (gains near 1, untied, all-local RoPE base equal to the
    global one) is written as gemma3_text and transformers computes the same logits."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=V, context_length=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=1, head_dim=16,
        mlp="geglu_tanh", norm_placement="sandwich", qk_norm=True, scale_embeddings=True, layer_pattern="LS",
        window=4, tie_embeddings=False, init_std=0.2,
    )  # fmt: skip
    model = TransformerLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    assert model.save_hf(tmp_path / "out") == "gemma3_text"
    hf = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf["layer_types"] == ["full_attention", "sliding_attention", "full_attention"]
    assert hf["query_pre_attn_scalar"] == 16 and hf["rope_local_base_freq"] == hf["rope_theta"] == 10_000.0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert max_diff(hf_logits(back), ours_logits(model)) < 1e-4
    with pytest.raises(ScratchLMError, match=r"gemma3_text: norm_placement='pre' \(needs 'sandwich'\), qk_norm=False"):
        TransformerLM(ModelConfig(vocab_size=V, d_model=32, n_heads=4)).save_hf(tmp_path / "x", "gemma3_text")
    with pytest.raises(ScratchLMError, match=r"llama: norm_placement='sandwich', qk_norm, scale_embeddings"):
        model.save_hf(tmp_path / "y", "llama")


def test_embedding_scale_rounds_like_gemma_in_bf16(ref, ours):
    """sqrt(48) = 6.93 is 6.9375 in bf16: the scaled embeddings are bit-identical to Gemma's."""
    theirs = copy.deepcopy(ref.model.embed_tokens).to(torch.bfloat16)
    mine = copy.deepcopy(ours.embed).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(mine(IDS), theirs(IDS))
        assert not torch.equal(mine(IDS), (mine.weight[IDS].float() * 48**0.5).to(torch.bfloat16))


def test_model_from_hf_with_gguf_alias(ref, hf_dir):
    """The GGUF importer's path: a config dict (model_type "gemma3", the transformers 4.x RoPE keys, the
    layer types as a period) and tensors under their Hugging Face names."""
    tensors = safetensors_torch.load_file(hf_dir / "model.safetensors")
    hf = {k: v for k, v in TINY.items() if k != "sliding_window_pattern"}
    hf.update(model_type="gemma3", rope_theta=1e6, rope_local_base_freq=1e4, _sliding_window_pattern=3)
    model = model_from_hf(hf, tensors, "gemma.gguf")
    assert max_diff(ours_logits(model), hf_logits(ref)) < 1e-4
    with pytest.raises(ScratchLMError, match=r"gemma.gguf has no tensor 'model.layers.2.self_attn.q_norm.weight'"):
        model_from_hf(hf, {k: v for k, v in tensors.items() if "layers.2.self_attn.q_norm" not in k}, "gemma.gguf")


# google/gemma-3-270m's config.json (written by transformers 4.55)
GEMMA3_270M = {
    "_sliding_window_pattern": 6,
    "architectures": ["Gemma3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "final_logit_softcapping": None,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 640,
    "initializer_range": 0.02,
    "intermediate_size": 2048,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "max_position_embeddings": 32768,
    "model_type": "gemma3_text",
    "num_attention_heads": 4,
    "num_hidden_layers": 18,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 512,
    "torch_dtype": "bfloat16",
    "use_bidirectional_attention": False,
    "use_cache": True,
    "vocab_size": 262144,
}


def test_270m_config_spellings_and_preset():
    preset = load_config(ModelConfig, "model", "gemma3-270m")
    assert config_from_hf(GEMMA3_270M) == preset
    # transformers 5.x: the RoPE bases nested per layer type; no layer_types (every 6th layer global)
    v5 = {k: v for k, v in GEMMA3_270M.items() if not k.startswith(("rope_", "layer_types", "_sliding"))}
    v5["rope_parameters"] = transformers.Gemma3TextConfig(**GEMMA3_270M).rope_parameters
    assert config_from_hf(v5) == preset
    assert config_from_hf({"model_type": "gemma3", "text_config": GEMMA3_270M}) == preset
    assert config_from_hf({**GEMMA3_270M, "model_type": "gemma3"}) == preset
    from scratchlm.model.accounting import count_params

    assert count_params(preset)["total"] == 268_098_176


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(final_logit_softcapping=30.0), r"final_logit_softcapping=30.0: soft-capping is not supported"),
        (dict(attn_logit_softcapping=50.0), r"attn_logit_softcapping=50.0: soft-capping is not supported"),
        (dict(layer_types=["sliding_attention"] * 17 + ["chunked_attention"]), r"unknown layer type 'chunked_att"),
        (dict(layer_types=["full_attention"] * 3), r"layer_types: 3 entries for 18 layers"),
        (dict(sliding_window=None), r"sliding_attention layers but sliding_window=None"),
        (dict(rope_scaling={"rope_type": "linear", "factor": 8.0}), r"rope_scaling.rope_type='linear'"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e6}), r"one dict per layer type"),
        (dict(use_bidirectional_attention=True), r"use_bidirectional_attention=true is not supported"),
        (dict(attention_bias=True), r"attention_bias=true is not supported"),
        (dict(hidden_activation="relu"), r"hidden_activation='relu' is not supported"),
        (dict(num_key_value_heads=3), r"n_kv_heads=3 must divide n_heads=4"),
    ],
)
def test_unsupported_configs(changes, message):
    with pytest.raises(ScratchLMError, match=message):
        config_from_hf({**GEMMA3_270M, **changes})


def test_unsupported_checkpoints(hf_dir, tmp_path):
    multimodal = tmp_path / "mm"
    multimodal.mkdir()
    (multimodal / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": GEMMA3_270M}))
    with pytest.raises(ScratchLMError, match=r"multimodal checkpoint .* use a text-only \(gemma3_text\) checkpoint"):
        TransformerLM.from_hf(multimodal)
    tensors = safetensors_torch.load_file(hf_dir / "model.safetensors")
    hf = json.loads((hf_dir / "config.json").read_text())
    extra = {**tensors, "model.layers.0.mlp.gate_proj.bias": torch.zeros(96)}
    with pytest.raises(ScratchLMError, match=r"gemma3_text mapping does not use: model.layers.0.mlp.gate_proj.bias"):
        model_from_hf(hf, extra, "test")
