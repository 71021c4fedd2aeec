"""The compiled merge loop (`_bpe_core.train_merges`) returns exactly what `merge_loop_python` does."""

from __future__ import annotations

import random
from array import array
from collections import Counter

import pytest
import regex
from shared_data import shared_file

from scratchlm.tokenizer.merge_loop import merge_loop_python
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN

_bpe_core = pytest.importorskip(
    "scratchlm.tokenizer._bpe_core",
    reason="compiled BPE core not built (run `python setup.py build_ext --inplace`)",
)

BYTES = [bytes([i]) for i in range(256)]
VOCAB = BYTES + [b"<|endoftext|>"]


def run_c(words: list[bytes], freqs: list[int], token_bytes: list[bytes], num_merges: int, progress=None):
    offsets = array("q", [0])
    for w in words:
        offsets.append(offsets[-1] + len(w))
    return _bpe_core.train_merges(b"".join(words), offsets, array("q", freqs), token_bytes, num_merges, progress)


def run_py(words: list[bytes], freqs: list[int], token_bytes: list[bytes], num_merges: int):
    return merge_loop_python([list(w) for w in words], freqs, token_bytes, num_merges)


def check(words: list[bytes], freqs: list[int], num_merges: int, token_bytes: list[bytes] = VOCAB):
    expected = run_py(words, freqs, token_bytes, num_merges)
    assert run_c(words, freqs, token_bytes, num_merges) == expected
    return expected


def test_tiny_hand_example():
    words = [b"low", b"lower", b"newest", b"widest", b"aaaa"]
    freqs = [5, 2, 6, 3, 4]
    merges = check(words, freqs, 10)
    # "es" (9) and "st" (9) tie with "aa" (4 * 3 = 12 counts every overlapping position): "aa" first
    assert merges[0] == (ord("a"), ord("a"))
    assert merges[1] == (ord("s"), ord("t"))  # tie with (e, s) at 9: b"s" > b"e"


def test_overlapping_runs():
    check([b"aaaaaaa", b"aaa", b"a" * 20, b"abababa", b"aabaabaab"], [1, 2, 3, 4, 5], 50)


@pytest.mark.parametrize("seed", range(40))
def test_random_small_corpora_with_ties(seed: int):
    rng = random.Random(seed)
    alphabet = rng.choice([b"ab", b"abc", b"\x00a", b"\x00\x01\xff", b"aAb\x00 ", bytes(range(6))])
    words = set()
    for _ in range(rng.randint(1, 40)):
        n = rng.randint(1, 12)
        if rng.random() < 0.2:  # runs of one byte: overlapping pairs
            words.add(bytes([rng.choice(alphabet)]) * n)
        else:
            words.add(bytes(rng.choice(alphabet) for _ in range(n)))
    words = sorted(words)
    freqs = [rng.choice([1, 1, 2, 3, 7]) for _ in words]  # small counts: many ties
    check(words, freqs, rng.randint(1, 60))


def test_identical_bytes_tie_broken_by_ids():
    # "abc" is built twice (a+bc and ab+c); both then pair with "d" at the same count
    words = [b"abc", b"xab", b"bcy", b"abcd"]
    check(words, [1, 1, 1, 1], 20)


def test_special_tokens_in_vocab_and_zero_freqs():
    vocab = BYTES + [b"<|endoftext|>", b"", b"\xff" * 3]
    words = [b"hello", b"help", b"\x00\x00", b"zzz"]
    check(words, [3, 2, 0, 1], 30, vocab)


def test_real_text():
    text = shared_file("text/tinystories_val.txt").read_bytes()[:300_000].decode("utf-8", errors="ignore")
    counts = Counter(regex.findall(GPT2_PATTERN, text))
    words = [w.encode("utf-8") for w in counts]
    freqs = list(counts.values())
    merges = check(words, freqs, 500)
    assert len(merges) == 500


def test_progress_called_and_exceptions_propagate():
    words = [bytes(random.Random(i).choices(b"abcdefgh", k=10)) for i in range(300)]
    freqs = [1 + i % 5 for i in range(len(words))]
    calls: list[int] = []
    merges = run_c(words, freqs, VOCAB, 200, calls.append)
    assert merges == run_py(words, freqs, VOCAB, 200)
    assert calls and calls[-1] == len(merges)
    assert all(n % 64 == 0 for n in calls[:-1]) and calls == sorted(set(calls))

    def boom(n: int) -> None:
        raise KeyboardInterrupt(f"stop at {n}")

    with pytest.raises(KeyboardInterrupt, match="stop at 64"):
        run_c(words, freqs, VOCAB, 200, boom)


def test_stops_when_pairs_run_out():
    words = [b"abc", b"ab", b"d"]
    merges = check(words, [2, 1, 5], 100)
    assert merges == [(ord("a"), ord("b")), (256 + 1, ord("c"))]
    assert run_c([], [], VOCAB, 10) == []
    assert run_c([b"x"], [1], VOCAB, 10) == []


def test_bad_input():
    with pytest.raises(ValueError):
        _bpe_core.train_merges(b"ab", array("q", [0, 2]), array("q", [-1]), VOCAB, 1, None)
    with pytest.raises(TypeError):
        _bpe_core.train_merges(b"ab", array("i", [0, 2]), array("q", [1]), VOCAB, 1, None)
    with pytest.raises(ValueError):
        _bpe_core.train_merges(b"ab", array("q", [0, 3]), array("q", [1]), VOCAB, 1, None)


@pytest.mark.parametrize("seed", range(20))
def test_zero_frequencies_never_merged(seed: int):
    # Words of frequency 0 hold pairs of count 0: both loops stop instead of merging them.
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"ab\x00") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 10))]
    freqs = [rng.choice([0, 0, 1, 2]) for _ in words]
    ref = merge_loop_python([list(w) for w in words], freqs, BYTES, 40)
    assert run_c(words, freqs, BYTES, 40) == ref
    counts = Counter()
    for w, f in zip(words, freqs):
        for pair in zip(w, w[1:]):
            counts[pair] += f
    if ref:
        assert counts[ref[0]] > 0
