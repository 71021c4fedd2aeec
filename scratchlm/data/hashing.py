"""Deterministic hashing and text normalisation shared by the dedup stages and the quality model.

Python's `hash()` is salted per process, so shards hashed in different workers (or Ray nodes, or a
resumed run) would disagree: everything here is keyed BLAKE2b or arithmetic on its output.
"""

from __future__ import annotations

import hashlib
import unicodedata

import numpy as np
import regex

_MARKS = regex.compile(r"\p{Mn}+")
_PUNCT = regex.compile(r"[\p{P}\p{S}]+")
MASK64 = (1 << 64) - 1

_word_cache: dict[str, int] = {}
_WORD_CACHE_MAX = 1 << 20  # distinct words remembered per process (a few hundred MB at most)


def normalize_for_dedup(text: str) -> str:
    """Lowercase, strip accents (NFD, drop combining marks), punctuation and symbols -> space, collapse whitespace."""
    text = unicodedata.normalize("NFD", text.lower())
    text = _MARKS.sub("", text)
    text = _PUNCT.sub(" ", text)
    return " ".join(text.split())


def hash64(data: bytes | str) -> int:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def hash128(data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).digest()


def word_hashes(words: list[str]) -> np.ndarray:
    """uint64 hash of each word, memoised per process (web text repeats a small vocabulary)."""
    cache = _word_cache
    if len(cache) > _WORD_CACHE_MAX:
        cache.clear()
    hs = [cache.get(w) for w in words]
    if None in hs:
        for i, h in enumerate(hs):
            if h is None:
                w = words[i]
                hs[i] = cache[w] = hash64(w)
    return np.array(hs, dtype=np.uint64)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al. 2014), vectorised: a bijective scramble of uint64s."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


_NGRAM_MULT = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime: mixes the running hash before the next word


def ngram_hash_series(wh: np.ndarray, max_n: int) -> list[np.ndarray]:
    """[hashes of 1-grams, 2-grams, ..., max_n-grams] (each (W-n+1,) uint64), built incrementally:
    the n-gram state is the (n-1)-gram state mixed with the next word, so all sizes cost one pass each."""
    out = []
    state = wh
    with np.errstate(over="ignore"):
        for n in range(1, min(max_n, wh.size) + 1):
            if n > 1:
                m = wh.size - n + 1
                state = splitmix64(state[:m] * _NGRAM_MULT ^ wh[n - 1 : n - 1 + m])
            out.append(splitmix64(state))
    return out


def ngram_hashes(wh: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every word n-gram (order-sensitive), from word hashes `wh` (W,) -> (max(W-n+1, 1),).

    A text shorter than `n` words gives one hash for all its words; no words gives an empty array.
    """
    if wh.size == 0:
        return wh
    return ngram_hash_series(wh, n)[-1]
