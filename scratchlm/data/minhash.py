"""MinHash signatures and LSH banding, vectorised with numpy (Broder 1997; Leskovec et al., MMDS ch. 3).

    mh = MinHasher(num_hashes=128, ngrams=5, seed=0)
    sig = mh.signature(text)                 # (num_hashes,) uint64 over normalised word 5-grams
    keys = band_keys(sig[None], num_bands)   # (1, num_bands) uint64: documents sharing a key are candidates

Each of the `num_hashes` hash functions is x -> a*x + b (mod 2**64) with random odd a, applied to
splitmix64-scrambled n-gram hashes: a permutation of the 64-bit space per function, and the signature
is the minimum image per function. P[two documents share a band] = 1 - (1 - s**r)**b for Jaccard
similarity s and r = num_hashes / b rows per band: the S-curve with threshold ~ (1/b)**(1/r).
"""

from __future__ import annotations

import numpy as np

from scratchlm.data.hashing import ngram_hashes, normalize_for_dedup, splitmix64, word_hashes
from scratchlm.errors import ScratchLMError

EMPTY = np.iinfo(np.uint64).max  # signature value of a document with no words
_CHUNK = 2048  # n-grams per step: bounds the (n-grams, num_hashes) temporary to 2 MB per 128 hashes


def check_lsh(num_hashes: int, num_bands: int) -> int:
    """Rows per band; an error unless the bands divide the hashes evenly."""
    if num_hashes < 1 or num_bands < 1 or num_hashes % num_bands:
        raise ScratchLMError(f"num_bands ({num_bands}) must divide num_hashes ({num_hashes}) evenly")
    return num_hashes // num_bands


def lsh_threshold(num_hashes: int, num_bands: int) -> float:
    """Jaccard similarity at which a pair becomes a candidate with probability ~1/2: (1/b)**(1/r)."""
    r = check_lsh(num_hashes, num_bands)
    return (1.0 / num_bands) ** (1.0 / r)


class MinHasher:
    def __init__(self, num_hashes: int = 128, ngrams: int = 5, seed: int = 0):
        if ngrams < 1:
            raise ScratchLMError(f"ngrams must be >= 1, got {ngrams}")
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 2**64, size=num_hashes, dtype=np.uint64) | np.uint64(1)  # (H,) odd multipliers
        self.b = rng.integers(0, 2**64, size=num_hashes, dtype=np.uint64)  # (H,)
        self.num_hashes = num_hashes
        self.ngrams = ngrams

    def shingles(self, text: str) -> np.ndarray:
        """Distinct n-gram hashes of the normalised text."""
        words = normalize_for_dedup(text).split()
        return np.unique(ngram_hashes(word_hashes(words), self.ngrams))

    def signature(self, text: str) -> np.ndarray:
        return self.signature_of(self.shingles(text))

    def signature_of(self, shingles: np.ndarray) -> np.ndarray:
        sig = np.full(self.num_hashes, EMPTY, dtype=np.uint64)
        if shingles.size == 0:
            return sig
        x = splitmix64(shingles)
        with np.errstate(over="ignore"):
            for start in range(0, x.size, _CHUNK):
                block = np.multiply.outer(self.a, x[start : start + _CHUNK])  # (H, n); outer + in-place add is
                block += self.b[:, None]  # ~4x faster than a broadcast a*x+b with its temporaries
                np.minimum(sig, block.min(axis=1), out=sig)
        return sig


def band_keys(sigs: np.ndarray, num_bands: int) -> np.ndarray:
    """(N, H) signatures -> (N, num_bands) uint64 band hashes (a key per band of r rows)."""
    n, h = sigs.shape
    r = check_lsh(h, num_bands)
    rows = sigs.reshape(n, num_bands, r)  # (N, B, r)
    key = np.zeros((n, num_bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(r):
            key = splitmix64(key ^ rows[:, :, j])
    return key


def bucket_groups(keys: np.ndarray, skip: np.ndarray | None = None):
    """Yield arrays of row indices sharing a key in some band (each group >= 2 rows, sorted).

    `skip` marks rows that never take part (empty documents: their identical signatures mean nothing).
    """
    n, bands = keys.shape
    idx_all = np.arange(n) if skip is None else np.flatnonzero(~skip)
    for band in range(bands):
        col = keys[idx_all, band]
        order = np.argsort(col, kind="stable")
        sorted_keys = col[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, sorted_keys.size])
        for s, size in zip(starts[sizes > 1], sizes[sizes > 1]):
            yield np.sort(idx_all[order[s : s + size]])


def candidate_pairs(keys: np.ndarray, skip: np.ndarray | None = None) -> set[tuple[int, int]]:
    """Every pair of rows that shares a bucket in at least one band (for tests and benchmarks: O(group^2))."""
    pairs: set[tuple[int, int]] = set()
    for group in bucket_groups(keys, skip):
        g = group.tolist()
        pairs.update((g[i], g[j]) for i in range(len(g)) for j in range(i + 1, len(g)))
    return pairs


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 0.0  # two empty documents are not evidence of duplication
    return len(a & b) / len(a | b)


def word_ngrams(text: str, n: int) -> set[str]:
    """Distinct word n-grams of the normalised text, as strings (the exact sets candidates are checked on)."""
    words = normalize_for_dedup(text).split()
    if not words:
        return set()
    n = min(n, len(words))
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the smallest index is the root: the kept document
