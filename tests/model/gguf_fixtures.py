"""Tiny GGUF files written the way llama.cpp's converter writes them, for fast import tests.

The layout facts are re-implemented here from llama.cpp's `convert_hf_to_gguf.py` (not imported
from scratchlm), so a mistake in `scratchlm.model.gguf` cannot cancel out:
- llama: q and k rows permuted per head into interleaved RoPE pairs (`LlamaModel.permute`);
- gemma3: every RMSNorm weight stored as 1 + w;
- names: blk.N.attn_q, ... ; the head is absent when tied.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import regex
import torch

SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. Once upon a time there was a little girl who "
    "lived in a village near the forest. Whenever she went out, the little girl wore a red riding "
    "cloak, so everyone in the village called her Little Red Riding Hood. "
) * 4

HF_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
ARCH_NAMES = {
    "llama": {"post_attention_layernorm": "ffn_norm"},
    "gemma3": {
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
    },
}


def tiny_byte_level_vocab(n_merges: int = 60):
    """(tokens spelled GPT-2 style, token types, merges as "a b" strings): 256 bytes, 3 specials, merges."""
    from scratchlm.tokenizer.formats import token_to_str
    from scratchlm.tokenizer.pretokenize import GPT2_PATTERN
    from scratchlm.tokenizer.train import train_bpe_from_counts

    counts = Counter(regex.findall(GPT2_PATTERN, TRAIN_TEXT))
    vocab, merges = train_bpe_from_counts(counts, 256 + len(SPECIALS) + n_merges, SPECIALS)
    tokens, types = [], []
    for i in range(len(vocab)):
        b = vocab[i]
        special = b.decode("utf-8", "replace") in SPECIALS and 256 <= i < 256 + len(SPECIALS)
        tokens.append(b.decode() if special else token_to_str(b))
        types.append(3 if special else 1)
    return tokens, types, [f"{token_to_str(a)} {token_to_str(b)}" for a, b in merges]


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: rows of each head from halves to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(
    path: Path,
    hf_model,
    arch: str = "llama",
    qtype: str = "F32",
    tokenizer: bool = True,
    chat_template: str | None = SMOLLM_TEMPLATE,
    pre: str = "default",
) -> Path:
    """Write `hf_model` (a transformers Llama / Gemma3 causal LM) as a llama.cpp-style GGUF file."""
    import gguf

    cfg = hf_model.config
    w = gguf.GGUFWriter(str(path), arch)
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    if arch == "llama":
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        w.add_rope_dimension_count(head_dim)
    else:
        rope = cfg.rope_parameters
        w.add_rope_freq_base(rope["full_attention"]["rope_theta"] if "full_attention" in rope else rope["rope_theta"])
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_sliding_window(cfg.sliding_window)
    if tokenizer:
        tokens, types, merges = tiny_byte_level_vocab(cfg.vocab_size - 256 - len(SPECIALS))
        assert len(tokens) == cfg.vocab_size, (len(tokens), cfg.vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(257)
        w.add_eos_token_id(258)
        w.add_pad_token_id(258)
        w.add_add_bos_token(False)
        if chat_template:
            w.add_chat_template(chat_template)
    names = {**HF_TO_GGUF, **ARCH_NAMES[arch]}
    for name, t in hf_model.state_dict().items():
        a = t.detach().float().numpy().copy()
        if name == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue
            out = "output.weight"
        elif name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            out = f"blk.{layer}.{names[module]}.{kind}"
            if arch == "llama" and module == "self_attn.q_proj":
                a = llamacpp_permute(a, heads)
            if arch == "llama" and module == "self_attn.k_proj":
                a = llamacpp_permute(a, kv)
        if arch == "gemma3" and name.endswith("norm.weight"):
            a = a + 1.0
        q = gguf.GGMLQuantizationType[qtype]
        if a.ndim == 2 and qtype != "F32" and a.shape[1] % gguf.GGML_QUANT_SIZES[q][0] == 0:
            w.add_tensor(out, gguf.quants.quantize(a, q), raw_dtype=q)
        else:
            w.add_tensor(out, a.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_llama(vocab: int = 256 + 3 + 60, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10_000.0,
        tie_word_embeddings=True,
        bos_token_id=257,
        eos_token_id=258,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1, so a wrong norm mapping shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model


def tiny_gemma3(vocab: int = 101, seed: int = 0):
    """A random Gemma 3 text model in the shape llama.cpp can describe (pattern 6, query scale head_dim)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=7,  # S S S S S L S
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,  # 4 * 32 != 64
        query_pre_attn_scalar=32,
        sliding_window=6,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        attn_implementation="eager",
    )
    model = Gemma3ForCausalLM(cfg).float()
    with torch.no_grad():  # every weight off its init (Gemma's norms start at 0, the identity)
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()
