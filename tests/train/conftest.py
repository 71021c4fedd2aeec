"""A tiny tokenizer and token files shared by the training tests."""

from __future__ import annotations

import random

import pytest

from scratchlm.tokenizer import Tokenizer, train_bpe
from scratchlm.tokenizer.encode_corpus import encode_file

WORDS = "the cat dog sat ran on a mat log big small red blue and then it was".split()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """{"train", "valid", "tokenizer"} paths: ~40k tokens of simple synthetic sentences, vocab 300."""
    d = tmp_path_factory.mktemp("tiny_data")
    rng = random.Random(0)

    def doc() -> str:
        return " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(5))

    (d / "train.txt").write_text("<|endoftext|>".join(doc() for _ in range(1500)))
    (d / "valid.txt").write_text("<|endoftext|>".join(doc() for _ in range(60)))
    vocab, merges = train_bpe(d / "train.txt", 300, ["<|endoftext|>"], num_workers=1)
    tok = Tokenizer(vocab, merges, ["<|endoftext|>"])
    tok.save(d / "tok")
    for split in ("train", "valid"):
        encode_file(tok, d / f"{split}.txt", d / f"{split}.bin", num_workers=1, tokenizer_source=str(d / "tok"))
    return {"train": d / "train.bin", "valid": d / "valid.bin", "tokenizer": d / "tok", "vocab_size": tok.vocab_size}
