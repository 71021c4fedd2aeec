from __future__ import annotations

import json

import numpy as np
import pytest

from scratchlm.errors import ScratchLMError
from scratchlm.tokenizer import Tokenizer, train_bpe
from scratchlm.tokenizer.encode_corpus import encode_file
from scratchlm.tokenizer.token_file import open_tokens, sidecar_path

EOT = "<|endoftext|>"
DOC = "It was the best of times, it was the worst of times; naïve café 中文.\n\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    path = d / "corpus.txt"
    path.write_text("".join(f"Document {i}. " + DOC * (1 + i % 7) + EOT for i in range(300)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(corpus):
    vocab, merges = train_bpe(corpus, 400, [EOT], num_workers=1)
    return Tokenizer(vocab, merges, [EOT])


@pytest.mark.parametrize("workers, chunk", [(1, 1 << 22), (2, 2048)])
def test_token_file_equals_encode(tok, corpus, tmp_path, workers, chunk):
    out = tmp_path / "corpus.bin"
    meta = encode_file(tok, corpus, out, num_workers=workers, chunk_bytes=chunk)
    ids, meta2 = open_tokens(out, expect_tokenizer_hash=tok.hash)
    expected = tok.encode(corpus.read_text(encoding="utf-8"))
    assert ids.dtype == np.uint16 and ids.tolist() == expected
    assert meta == meta2 and meta["count"] == len(expected) and meta["documents"] == 300
    assert meta["doc_separator"] == EOT and meta["doc_separator_id"] == tok.special_ids[EOT]
    assert meta["tokenizer_hash"] == tok.hash and meta["source_bytes"] == corpus.stat().st_size


def test_uint32_when_vocab_exceeds_uint16(tok, corpus, tmp_path):
    vocab = dict(tok.vocab)
    vocab[70_000] = b"<|big|>"
    big = Tokenizer(vocab, tok.merges, [EOT, "<|big|>"])
    (tmp_path / "c.txt").write_text("hello <|big|> world" + EOT)
    encode_file(big, tmp_path / "c.txt", tmp_path / "c.bin", num_workers=1)
    ids, meta = open_tokens(tmp_path / "c.bin")
    assert meta["dtype"] == "uint32" and 70_000 in ids.tolist()


def test_refuses_to_overwrite_and_checks_tokenizer(tok, corpus, tmp_path):
    out = tmp_path / "c.bin"
    encode_file(tok, corpus, out, num_workers=1)
    with pytest.raises(ScratchLMError, match="already exists"):
        encode_file(tok, corpus, out, num_workers=1)
    with pytest.raises(ScratchLMError, match="encoded with another tokenizer"):
        open_tokens(out, expect_tokenizer_hash="0" * 64)


def test_truncated_or_foreign_token_file(tok, corpus, tmp_path):
    out = tmp_path / "c.bin"
    encode_file(tok, corpus, out, num_workers=1)
    out.write_bytes(out.read_bytes()[:-2])
    with pytest.raises(ScratchLMError, match="truncated or replaced"):
        open_tokens(out)
    sidecar_path(out).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ScratchLMError, match="not a scratchlm token-file sidecar"):
        open_tokens(out)
    with pytest.raises(ScratchLMError, match="token file not found"):
        open_tokens(tmp_path / "missing.bin")


def test_failure_leaves_no_partial_output(tok, corpus, tmp_path, monkeypatch):
    import scratchlm.tokenizer.encode_corpus as ec

    def boom(text, dtype):
        raise RuntimeError("worker crashed")

    monkeypatch.setattr(ec, "_encode_chunk", boom)
    with pytest.raises(RuntimeError):
        encode_file(tok, corpus, tmp_path / "c.bin", num_workers=1)
    assert list(tmp_path.iterdir()) == []


def test_missing_or_empty_input(tok, tmp_path):
    with pytest.raises(ScratchLMError, match="corpus file not found"):
        encode_file(tok, tmp_path / "nope.txt", tmp_path / "o.bin")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ScratchLMError, match="is empty"):
        encode_file(tok, tmp_path / "empty.txt", tmp_path / "o.bin")
