from __future__ import annotations

import pytest
from shared_data import shared_file

from scratchlm.errors import ScratchLMError
from scratchlm.tokenizer import train_bpe, train_bpe_from_counts
from scratchlm.tokenizer.train import count_pretokens_in_file

SPECIAL = "<|endoftext|>"


def test_hand_checked_merges():
    # Sennrich et al. / CS336 handout example: words split on whitespace, vocab 256 + 1 special + 6 merges.
    counts = {b"low": 5, b"lower": 2, b"widest": 3, b"newest": 6}
    vocab, merges = train_bpe_from_counts(counts, 257 + 6, [SPECIAL], backend="python")
    # (s,t) and (e,s) both occur 9 times: the tie goes to the greater pair ("s","t").
    assert merges == [(b"s", b"t"), (b"e", b"st"), (b"o", b"w"), (b"l", b"ow"), (b"w", b"est"), (b"n", b"e")]
    assert vocab[256] == SPECIAL.encode() and vocab[257] == b"st" and len(vocab) == 263
    assert [vocab[i] for i in range(256)] == [bytes([i]) for i in range(256)]


def test_tie_break_is_lexicographic_on_bytes_with_prefixes():
    # (b"a", b"bc") vs (b"ab", b"c"): compare first elements, and a longer string with the same prefix is greater.
    counts = {b"xy": 3, b"xyz": 0, b"yx": 3}
    _, merges = train_bpe_from_counts(counts, 257, [], backend="python")
    assert merges == [(b"y", b"x")]  # (y, x) > (x, y)


def _write(tmp_path, text, name="corpus.txt"):
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8"))
    return p


CORPUS = (
    "Hello world! It's 2024, and the café's prices rose 3.5%.\n\n"
    + SPECIAL
    + "The quick brown fox jumps over the lazy dog. " * 40
    + SPECIAL
    + "naïve  façade   résumé\t\ttabs\n" * 30
)


def test_special_tokens_split_text_and_are_never_merged(tmp_path):
    path = _write(tmp_path, ("ab" + SPECIAL) * 50)
    vocab, merges = train_bpe(path, 300, [SPECIAL], num_workers=1)
    assert all(b"<|" not in a + b for a, b in merges)  # nothing merged across or inside the special token
    assert (b"a", b"b") == merges[0] and len(merges) == 1  # only "ab" exists between specials


def test_merges_never_cross_pretokens(tmp_path):
    path = _write(tmp_path, "dog dog dog cat cat dog" * 20)
    _, merges = train_bpe(path, 320, [], num_workers=1)
    for a, b in merges:
        assert b" " not in (a + b)[1:], (a, b)  # a space can only lead a pre-token


def test_deterministic_and_parallel_equals_serial(tmp_path):
    path = _write(tmp_path, CORPUS * 30)
    serial = train_bpe(path, 400, [SPECIAL], num_workers=1, chunk_bytes=1 << 22)
    again = train_bpe(path, 400, [SPECIAL], num_workers=1, chunk_bytes=1 << 22)
    parallel_small_chunks = train_bpe(path, 400, [SPECIAL], num_workers=2, chunk_bytes=1024)
    assert serial == again == parallel_small_chunks


def test_python_and_compiled_backends_agree(tmp_path):
    pytest.importorskip("scratchlm.tokenizer._bpe_core", reason="compiled BPE core not built")
    path = _write(tmp_path, CORPUS * 10)
    assert train_bpe(path, 350, [SPECIAL], num_workers=1, backend="python") == train_bpe(
        path, 350, [SPECIAL], num_workers=1, backend="c"
    )


def test_chunked_counting_equals_whole_file_on_real_text(tmp_path):
    path = shared_file("text/owt_mini.txt")
    whole = count_pretokens_in_file(path, [SPECIAL], num_workers=1, chunk_bytes=1 << 30)
    chunked = count_pretokens_in_file(path, [SPECIAL], num_workers=2, chunk_bytes=64 << 10)
    assert whole == chunked


def test_chunks_without_special_tokens_cut_safely(tmp_path):
    # No special token at all: chunks are cut at safe pre-token boundaries instead.
    text = "word  \n\n  other, words 123 'll\t " * 2000
    path = _write(tmp_path, text)
    whole = count_pretokens_in_file(path, [], num_workers=1, chunk_bytes=1 << 30)
    chunked = count_pretokens_in_file(path, [], num_workers=1, chunk_bytes=1024)
    assert whole == chunked


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path, caplog):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello \xff\xfe world " * 100)
    vocab, merges = train_bpe(path, 270, [], num_workers=1)
    assert "not valid UTF-8" in caplog.text
    assert any("\ufffd".encode() in v for v in vocab.values())


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing.txt", "corpus file not found"),
        (lambda p: p, "is a directory"),
        (lambda p: (p / "empty.txt").write_text("") and p / "empty.txt" or p / "empty.txt", "is empty"),
    ],
)
def test_bad_input_files(tmp_path, setup, message):
    with pytest.raises(ScratchLMError, match=message):
        train_bpe(setup(tmp_path), 300, [SPECIAL])


def test_bad_vocab_size_and_specials(tmp_path):
    path = _write(tmp_path, "some text")
    with pytest.raises(ScratchLMError, match="smaller than the 256 byte tokens"):
        train_bpe(path, 256, [SPECIAL])
    with pytest.raises(ScratchLMError, match="non-empty strings"):
        train_bpe(path, 300, [""])
    only_special = _write(tmp_path, SPECIAL * 3, "special.txt")
    with pytest.raises(ScratchLMError, match="no text besides special tokens"):
        train_bpe(only_special, 300, [SPECIAL])


def test_small_corpus_stops_early_with_warning(tmp_path, caplog):
    path = _write(tmp_path, "abc")
    vocab, merges = train_bpe(path, 1000, [], num_workers=1)
    assert len(merges) == 2 and "only 2 merges possible" in caplog.text
