"""bits_per_byte against a direct computation with the model's full logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.errors import ScratchLMError
from scratchlm.eval.bpb import bits_per_byte, documents
from scratchlm.model.config import ModelConfig
from scratchlm.model.transformer import TransformerLM
from scratchlm.tokenizer.chat import ChatTokenizer
from scratchlm.tokenizer.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])  # bytes + eot (256)
    cfg = ModelConfig(vocab_size=257, context_length=64, d_model=32, n_layers=2, n_heads=4)
    return TransformerLM(cfg).eval(), ChatTokenizer.plain(tok)


def direct_bits(model, ids: list[int], start: int) -> float:
    x = torch.tensor([[start, *ids[:-1]]])
    with torch.no_grad():
        return F.cross_entropy(model(x)[0], torch.tensor(ids), reduction="sum").item() / math.log(2)


def test_one_window_equals_the_direct_sum(setup):
    model, chat = setup
    text = "hello world, a short document"
    r = bits_per_byte(model, chat, text, context=64)
    ids = chat.tokenizer.encode(text)
    assert r["tokens"] == len(ids) and r["bytes"] == len(text.encode())
    assert r["bits_per_byte"] == pytest.approx(direct_bits(model, ids, 256) / len(text.encode()), rel=1e-5)


def test_windows_and_documents(setup):
    model, chat = setup
    docs = ["a" * 50 + "bcd" * 10, "second document é"]
    text = "<|endoftext|>".join(docs)
    r = bits_per_byte(model, chat, text, context=16, chunk=7)  # 15 tokens per window, head in chunks of 7
    want = 0.0
    for d in docs:
        ids = chat.tokenizer.encode(d)
        want += sum(direct_bits(model, ids[lo : lo + 15], 256) for lo in range(0, len(ids), 15))
    assert r["documents"] == 2
    assert r["bits_per_byte"] == pytest.approx(want / sum(len(d.encode()) for d in docs), rel=1e-5)


def test_bad_input(setup):
    model, chat = setup
    with pytest.raises(ScratchLMError):
        bits_per_byte(model, chat, "<|endoftext|>\n")
    with pytest.raises(ScratchLMError):
        bits_per_byte(model, chat, "text", context=1)
    assert documents("a<|endoftext|>\n<|endoftext|>b") == ["a", "b"]
