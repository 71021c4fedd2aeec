"""A tiny synthetic corpus -> 300-token BPE -> train/valid token files, for tests that train models."""

from __future__ import annotations

import random
from pathlib import Path

from scratchlm.tokenizer import Tokenizer, train_bpe
from scratchlm.tokenizer.encode_corpus import encode_file

WORDS = "the cat dog sat ran on a mat log big small red blue and then it was".split()


def build_tiny_corpus(d: Path, train_docs: int = 1500, valid_docs: int = 60) -> dict:
    """{"dir", "train", "valid", "tokenizer", "vocab_size"}: ~27 tokens per document of simple sentences."""
    rng = random.Random(0)

    def doc() -> str:
        return " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(5))

    (d / "train.txt").write_text("<|endoftext|>".join(doc() for _ in range(train_docs)))
    (d / "valid.txt").write_text("<|endoftext|>".join(doc() for _ in range(valid_docs)))
    vocab, merges = train_bpe(d / "train.txt", 300, ["<|endoftext|>"], num_workers=1)
    tok = Tokenizer(vocab, merges, ["<|endoftext|>"])
    tok.save(d / "tok")
    for split in ("train", "valid"):
        encode_file(tok, d / f"{split}.txt", d / f"{split}.bin", num_workers=1, tokenizer_source=str(d / "tok"))
    return {"dir": d, "train": d / "train.bin", "valid": d / "valid.bin", "tokenizer": d / "tok",
            "vocab_size": tok.vocab_size}  # fmt: skip
