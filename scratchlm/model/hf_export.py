"""A model and its tokenizer as one Hugging Face directory (`scratchlm model export-hf`).

    save_hf_with_tokenizer(model, chat, "hf/smollm2")
    # transformers: AutoModelForCausalLM.from_pretrained("hf/smollm2"), AutoTokenizer.from_pretrained("hf/smollm2")

Weights and config.json come from `hf.save_hf`. A byte-level BPE tokenizer is written as a
`tokenizers` tokenizer.json (BPE model with our vocabulary and merges, the pre-tokenizer regex as a
Split followed by ByteLevel, our special tokens as added tokens) plus tokenizer_config.json with the
chat template and special tokens, and generation_config.json with the stop tokens. A SentencePiece
vocabulary (Gemma) is not exported yet: the directory then holds the weights and config only, and
the function says so in its return value.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from scratchlm.io import atomic_dir, write_json


def tokenizers_json(tok) -> dict:
    """The `tokenizers` library's tokenizer.json for a scratchlm byte-level `Tokenizer`."""
    from scratchlm.tokenizer.formats import token_to_str

    special = set(tok.special_ids.values())
    added = [
        dict(id=i, content=s, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
        for s, i in sorted(tok.special_ids.items(), key=lambda kv: kv[1])
    ]
    vocab = {}
    for i in sorted(tok.vocab):
        key = tok.vocab[i].decode("utf-8") if i in special else token_to_str(tok.vocab[i])
        vocab.setdefault(key, i)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[token_to_str(a), token_to_str(b)] for a, b in tok.merges],
        },
    }


def save_hf_with_tokenizer(model, chat, path: str | os.PathLike, overwrite: bool = False) -> str:
    """Write weights + config (+ tokenizer files where the vocabulary kind allows) atomically.
    Returns the model_type written, with a note when the tokenizer was left out."""
    from scratchlm.model.hf import save_hf
    from scratchlm.tokenizer.tokenizer import Tokenizer

    path = Path(path)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        weights = tmp / "weights"
        model_type = save_hf(model, weights)
        for f in weights.iterdir():
            shutil.move(str(f), tmp / f.name)
        weights.rmdir()
        write_json(
            tmp / "generation_config.json",
            {"bos_token_id": chat.bos_id, "eos_token_id": chat.stop_ids or chat.eos_id, "do_sample": False},
        )
        if not isinstance(chat.tokenizer, Tokenizer):
            return f"{model_type}; tokenizer not exported (SentencePiece vocabularies are not yet)"
        with open(tmp / "tokenizer.json", "w", encoding="utf-8") as f:
            json.dump(tokenizers_json(chat.tokenizer), f, ensure_ascii=False)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": chat.bos_token,
            "eos_token": chat.eos_token,
            "pad_token": chat.pad_token,
            "add_bos_token": chat.add_bos,
            "add_eos_token": chat.add_eos,
            "model_max_length": model.config.context_length,
        }
        if chat.chat_template:
            config["chat_template"] = chat.chat_template
        write_json(tmp / "tokenizer_config.json", config)
    return model_type
