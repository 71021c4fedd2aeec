from __future__ import annotations

import json

import pytest
from shared_data import shared_file

from scratchlm.errors import ScratchLMError
from scratchlm.tokenizer import Tokenizer, load_tokenizer, train_bpe_from_counts
from scratchlm.tokenizer.formats import bytes_to_unicode, read_gpt2

EOT = "<|endoftext|>"
TEXT = "Hello world! naïve café 中文 <|endoftext|> tabs\t\tand  spaces\n"


@pytest.fixture
def tok():
    counts = {" hello": 9, " world": 7, "naïve": 3, " café": 4, "\t\t": 2, "  ": 5, "\x00\x01": 2}
    vocab, merges = train_bpe_from_counts(counts, 290, [EOT])
    return Tokenizer(vocab, merges, [EOT])


def test_byte_to_unicode_is_a_bijection_onto_printables():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


@pytest.mark.parametrize("fmt", ["native", "gpt2", "both"])
def test_save_load_roundtrip(tok, tmp_path, fmt):
    tok.save(tmp_path / "tok", fmt=fmt)
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.vocab == tok.vocab and loaded.merges == tok.merges
    assert loaded.special_tokens == [EOT]  # GPT-2 files: detected as the token no merge makes
    assert loaded.encode(TEXT) == tok.encode(TEXT)
    assert loaded.hash == tok.hash
    meta = json.loads((tmp_path / "tok" / "meta.json").read_text())
    assert meta["hash"] == tok.hash and meta["vocab_size"] == tok.vocab_size


def test_gpt2_files_roundtrip_byte_for_byte(tmp_path):
    vocab_path, merges_path = shared_file("tokenizer/gpt2_vocab.json"), shared_file("tokenizer/gpt2_merges.txt")
    tok = Tokenizer.from_files(vocab_path, merges_path, [EOT])
    assert tok.vocab_size == 50257 and len(tok.merges) == 50000 and tok.special_ids[EOT] == 50256
    tok.save(tmp_path / "out", fmt="gpt2")
    assert json.loads((tmp_path / "out" / "vocab.json").read_text()) == json.loads(vocab_path.read_text())
    written = (tmp_path / "out" / "merges.txt").read_text().splitlines()
    assert written[0] == "#version: 0.2" and written[1:] == merges_path.read_text().splitlines()
    assert load_tokenizer(vocab_path).encode(TEXT) == tok.encode(TEXT)  # merges found beside the vocab


def test_existing_directory_is_not_replaced_without_overwrite(tok, tmp_path):
    tok.save(tmp_path / "tok")
    with pytest.raises(ScratchLMError, match="already exists"):
        tok.save(tmp_path / "tok")
    tok.save(tmp_path / "tok", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temp directories left behind


def test_failed_save_leaves_nothing(tok, tmp_path, monkeypatch):
    import scratchlm.tokenizer.formats as formats

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(formats, "write_gpt2", boom)
    with pytest.raises(OSError):
        tok.save(tmp_path / "tok")
    assert list(tmp_path.iterdir()) == []


def test_wrong_format_and_version_errors(tok, tmp_path):
    tok.save(tmp_path / "tok", fmt="native")
    path = tmp_path / "tok" / "tokenizer.json"
    data = json.loads(path.read_text())

    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ScratchLMError, match="version 99; this scratchlm reads version 1"):
        load_tokenizer(tmp_path / "tok")

    data["version"] = 1
    data["merges"] = data["merges"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(ScratchLMError, match="does not match its recorded hash"):
        load_tokenizer(tmp_path / "tok")

    path.write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    with pytest.raises(ScratchLMError, match="Hugging Face tokenizers file"):
        load_tokenizer(path)

    path.write_text("{not json")
    with pytest.raises(ScratchLMError, match="bad JSON"):
        load_tokenizer(path)

    with pytest.raises(ScratchLMError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(ScratchLMError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "nope")


def test_bad_gpt2_files(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ScratchLMError, match=r"merges.txt:2: expected two tokens"):
        read_gpt2(tmp_path / "vocab.json", tmp_path / "merges.txt")
    (tmp_path / "vocab.json").write_text(json.dumps(["not", "a", "dict"]))
    with pytest.raises(ScratchLMError, match="not a GPT-2 vocab.json"):
        read_gpt2(tmp_path / "vocab.json", tmp_path / "merges.txt")
    (tmp_path / "vocab.json").write_text(json.dumps({" space": 0}))
    with pytest.raises(ScratchLMError, match="outside GPT-2's byte-to-unicode table"):
        read_gpt2(tmp_path / "vocab.json", tmp_path / "merges.txt")
