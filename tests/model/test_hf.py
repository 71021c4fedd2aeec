"""Hugging Face interop: tiny random transformers models (built offline from configs) load into
TransformerLM with the same logits, save back to a checkpoint transformers reads with the same
logits, and unsupported configs or broken checkpoints fail with errors that name the problem."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.model.hf import config_from_hf

transformers = pytest.importorskip("transformers", reason="the HF interop tests compare against transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

V, T = 101, 24
LLAMA = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    bos_token_id=None,
    eos_token_id=None,
)
# name -> (config class, model class, config kwargs); every variant runs with an explicit attention backend
HF_MODELS = {
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=None, eos_token_id=None),
    ),
    "gpt2 untied relu": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(
            vocab_size=V,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_inner=48,
            activation_function="relu",
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=None,
        ),
    ),
    "llama gqa untied": ("LlamaConfig", "LlamaForCausalLM", dict(LLAMA, num_key_value_heads=2, rope_theta=500.0)),
    "llama gqa tied": ("LlamaConfig", "LlamaForCausalLM", dict(LLAMA, num_key_value_heads=1, tie_word_embeddings=True)),
    "llama biases head_dim": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(LLAMA, attention_bias=True, mlp_bias=True, head_dim=16, hidden_act="gelu"),
    ),
    "mistral full": ("MistralConfig", "MistralForCausalLM", dict(LLAMA, num_key_value_heads=2, sliding_window=None)),
    "mistral window 5": ("MistralConfig", "MistralForCausalLM", dict(LLAMA, num_key_value_heads=2, sliding_window=5)),
    "qwen2 biases": ("Qwen2Config", "Qwen2ForCausalLM", dict(LLAMA, num_key_value_heads=2)),
    "qwen2 window on upper layers": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(
            LLAMA,
            num_hidden_layers=3,
            num_key_value_heads=2,
            use_sliding_window=True,
            sliding_window=5,
            max_window_layers=1,
        ),
    ),
}
# save_hf picks the first of gpt2, llama, mistral, qwen2 that represents the model exactly
SAVED_AS = {"mistral full": "llama"}


def perturb_(model: torch.nn.Module, seed: int = 0) -> None:
    """Make every tensor matter: HF and scratchlm init biases to 0 and norm gains to 1, which would
    hide a swapped norm or a dropped bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def hf_model(name: str, attn: str = "eager"):
    cfg_cls, model_cls, kw = HF_MODELS[name]
    torch.manual_seed(0)
    config = getattr(transformers, cfg_cls)(**kw, attn_implementation=attn)
    model = getattr(transformers, model_cls)(config)
    perturb_(model)
    return model.eval()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def ours_logits(model, ids):
    with torch.no_grad():
        return model.eval()(ids)


def load_transformers(path, attn: str = "eager"):
    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn).eval()


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


IDS = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))


# sdpa too on the sliding-window models, whose masks transformers builds differently per backend
ROUNDTRIPS = [(name, "eager") for name in HF_MODELS] + [(name, "sdpa") for name in HF_MODELS if "window" in name]


@pytest.mark.parametrize("name, attn", ROUNDTRIPS, ids=[f"{n}-{a}" for n, a in ROUNDTRIPS])
def test_load_save_roundtrip_logits(name, attn, tmp_path):
    ref = hf_model(name, attn)
    ref.save_pretrained(tmp_path / "hf")
    ours = TransformerLM.from_hf(tmp_path / "hf")
    expected = hf_logits(ref, IDS)
    assert max_diff(ours_logits(ours, IDS), expected) <= 1e-4

    written = ours.save_hf(tmp_path / "back")
    assert written == SAVED_AS.get(name, name.split()[0])
    back = load_transformers(tmp_path / "back", attn)
    assert max_diff(hf_logits(back, IDS), expected) <= 1e-4
    # the config survives HF -> scratchlm -> HF -> scratchlm
    assert TransformerLM.from_hf(tmp_path / "back").config == ours.config


def test_sliding_window_is_applied():
    """The window (5 < T) changes the logits: a model loaded without it would not match."""
    ref = hf_model("mistral window 5")
    hf_cfg = ref.config.to_dict()
    cfg = config_from_hf(hf_cfg)
    assert (cfg.layer_pattern, cfg.window) == ("S", 5)
    assert config_from_hf({**hf_cfg, "sliding_window": 64}).layer_pattern == "L"  # window >= context: full
    full = hf_model("mistral full")
    assert max_diff(hf_logits(ref, IDS), hf_logits(full, IDS)) > 1e-3
    qwen = config_from_hf(hf_model("qwen2 window on upper layers").config.to_dict())
    assert (qwen.layer_pattern, qwen.window) == ("LSS", 5)


NATIVE = {
    "llama-like gqa untied": (dict(n_kv_heads=2, tie_embeddings=False), "llama"),
    "geglu head_dim": (dict(mlp="geglu", head_dim=16), "llama"),
    "geglu_tanh (gelu_pytorch_tanh)": (dict(mlp="geglu_tanh"), "llama"),
    "biases (zero norm biases)": (dict(bias=True), "llama"),
    "qkv bias": (dict(qkv_bias=True, n_kv_heads=1), "qwen2"),
    "fused rmsnorm kernel": (dict(norm="rmsnorm_fused"), "llama"),
    "all sliding": (dict(layer_pattern="S", window=4), "mistral"),
    "mixed L/S": (dict(layer_pattern="LSS", n_layers=3, window=4), "qwen2"),
    "gpt2-like without biases": (
        dict(positions="learned", norm="layernorm", mlp="gelu_tanh", tie_embeddings=True),
        "gpt2",
    ),
    "gpt2-like gelu biases untied": (
        dict(positions="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=False),
        "gpt2",
    ),
}


@pytest.mark.parametrize("kw, model_type", NATIVE.values(), ids=NATIVE.keys())
def test_save_native_model_for_transformers(kw, model_type, tmp_path):
    torch.manual_seed(0)
    model = TransformerLM(
        ModelConfig(**{**dict(vocab_size=V, context_length=64, d_model=32, n_layers=2, n_heads=4), **kw})
    )
    perturb_(model)
    if model.config.norm.startswith("rmsnorm"):  # Llama-family norms have no bias
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name and name.endswith("bias"):
                    p.zero_()
    assert model.save_hf(tmp_path / "out") == model_type
    assert max_diff(hf_logits(load_transformers(tmp_path / "out"), IDS), ours_logits(model, IDS)) <= 1e-4
    assert max_diff(ours_logits(TransformerLM.from_hf(tmp_path / "out"), IDS), ours_logits(model, IDS)) <= 1e-4


def test_sharded_and_unprefixed_checkpoints(tmp_path):
    ref = hf_model("llama gqa untied")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    expected = hf_logits(ref, IDS)
    assert max_diff(ours_logits(TransformerLM.from_hf(tmp_path / "sharded"), IDS), expected) <= 1e-4
    # The original openai-community/gpt2 checkpoint has no "transformer." prefix and stores mask buffers.
    ref = hf_model("gpt2")
    ref.save_pretrained(tmp_path / "gpt2")
    file = tmp_path / "gpt2" / "model.safetensors"
    tensors = {k.removeprefix("transformer."): v for k, v in safetensors_torch.load_file(file).items()}
    tensors["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    safetensors_torch.save_file(tensors, file, metadata={"format": "pt"})
    assert max_diff(ours_logits(TransformerLM.from_hf(tmp_path / "gpt2"), IDS), hf_logits(ref, IDS)) <= 1e-4


def test_transformers_4x_config_layout():
    """transformers 4.x wrote rope_theta at the top level and scaling in rope_scaling."""
    hf = dict(LLAMA, model_type="llama", rope_theta=250.0, rope_scaling=None)
    assert config_from_hf(hf).rope_theta == 250.0
    with pytest.raises(ScratchLMError, match=r"rope_scaling.rope_type='dynamic'"):
        config_from_hf({**hf, "rope_scaling": {"type": "dynamic", "factor": 2.0}})


@pytest.fixture
def llama_dir(tmp_path):
    hf_model("llama gqa untied").save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(model_type="bert"), r"model_type='bert' is not supported"),
        (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}), r"rope_type='yarn'"),
        (dict(rope_parameters={"rope_type": "llama3", "factor": 8.0}), r"RoPE scaling is not implemented"),
        (dict(hidden_act="relu"), r"hidden_act='relu' is not supported"),
        (dict(num_key_value_heads=3), r"n_kv_heads=3 must divide n_heads=4"),
        (dict(head_dim=16), r"q_proj.weight has shape \(32, 32\), config.json implies \(64, 32\)"),
    ],
)
def test_unsupported_configs(llama_dir, changes, message):
    edit_config(llama_dir, **changes)
    with pytest.raises(ScratchLMError, match=message):
        TransformerLM.from_hf(llama_dir)


def test_qwen2_layer_types_without_window_refused():
    hf = dict(LLAMA, model_type="qwen2", layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(ScratchLMError, match="sliding_attention layers but no sliding window"):
        config_from_hf(hf)


def test_broken_checkpoints(llama_dir, tmp_path):
    file = llama_dir / "model.safetensors"
    tensors = safetensors_torch.load_file(file)
    with pytest.raises(ScratchLMError, match="not found"):
        TransformerLM.from_hf(tmp_path / "nowhere")

    safetensors_torch.save_file({k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}, file)
    with pytest.raises(ScratchLMError, match=r"no tensor 'model.layers.1.mlp.up_proj.weight'"):
        TransformerLM.from_hf(llama_dir)

    safetensors_torch.save_file({k: v for k, v in tensors.items() if k != "lm_head.weight"}, file)
    with pytest.raises(ScratchLMError, match=r"no tensor 'lm_head.weight'"):  # untied: the head is needed
        TransformerLM.from_hf(llama_dir)

    safetensors_torch.save_file({**tensors, "model.layers.0.self_attn.q_norm.weight": torch.ones(8)}, file)
    with pytest.raises(ScratchLMError, match=r"does not use: model.layers.0.self_attn.q_norm.weight"):
        TransformerLM.from_hf(llama_dir)

    safetensors_torch.save_file({**tensors, "model.norm.weight": torch.ones(31)}, file)
    with pytest.raises(ScratchLMError, match=r"norm.weight has shape \(31,\), config.json implies \(32,\)"):
        TransformerLM.from_hf(llama_dir)

    file.unlink()
    (llama_dir / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ScratchLMError, match=r"no model.safetensors .* only safetensors checkpoints are supported"):
        TransformerLM.from_hf(llama_dir)


def test_unrepresentable_models_are_refused(tmp_path):
    base = dict(vocab_size=V, context_length=64, d_model=32, n_layers=2, n_heads=4)
    ssm = TransformerLM(ModelConfig(**base, layer_pattern="ML", norm_placement="post"))
    with pytest.raises(ScratchLMError, match=r"llama: .*state-space \(M\) layers, norm_placement='post'"):
        ssm.save_hf(tmp_path / "a")
    with pytest.raises(ScratchLMError, match=r"gpt2: positions='rope' \(needs 'learned'\)"):
        TransformerLM(ModelConfig(**base)).save_hf(tmp_path / "b", model_type="gpt2")
    with pytest.raises(ScratchLMError, match=r"model_type='t5' is not supported"):
        TransformerLM(ModelConfig(**base)).save_hf(tmp_path / "c", model_type="t5")
    biased = TransformerLM(ModelConfig(**base, bias=True))
    with torch.no_grad():
        biased.blocks["1"].ffn.norm_in.bias.fill_(0.5)  # Llama's RMSNorm has no bias to hold this
    with pytest.raises(ScratchLMError, match=r"no place for the non-zero tensors blocks.1.ffn.norm_in.bias"):
        biased.save_hf(tmp_path / "d")
    assert not (tmp_path / "d").exists()  # nothing half-written


def test_save_does_not_clobber_without_overwrite(tmp_path):
    model = TransformerLM(ModelConfig(vocab_size=V, context_length=64, d_model=32, n_layers=1, n_heads=4))
    model.save_hf(tmp_path / "out")
    with pytest.raises(ScratchLMError, match="already exists"):
        model.save_hf(tmp_path / "out")
    assert model.save_hf(tmp_path / "out", overwrite=True) == "llama"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
