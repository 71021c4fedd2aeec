"""The BPE merge loop over pre-token frequencies, with incremental pair counts.

Input: each distinct pre-token as a list of token ids (initially its bytes) and its frequency.
Each step merges the most frequent adjacent pair; ties go to the lexicographically greatest
pair of byte strings (bytes_a, bytes_b), then to the greatest ids (only possible when two merges
built the same bytes). Only the words that contain the merged pair are touched, and only their
pair counts change, so a merge costs O(occurrences of the pair), not a full recount.

`merge_loop_python` is the readable reference. `_bpe_core.train_merges` (C, built at install
when a compiler is present) is the same algorithm and must return the same merges: the tests
check both on several corpora.
"""

from __future__ import annotations

import heapq
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

try:
    from scratchlm.tokenizer import _bpe_core  # type: ignore[attr-defined]
except ImportError:  # no compiler at install time
    _bpe_core = None

Progress = Callable[[int], None] | None  # called with the number of merges done so far


def _desc(b: bytes) -> tuple[int, ...]:
    """A key whose ascending order is the descending byte order of `b` (so a min-heap pops the greatest).

    Each byte is complemented, and 256 (greater than any complemented byte) ends the key so that
    a longer string with `b` as a prefix, which is greater, sorts first.
    """
    return tuple(255 - x for x in b) + (256,)


def merge_loop_python(
    words: list[list[int]], freqs: Sequence[int], token_bytes: list[bytes], num_merges: int, progress: Progress = None
) -> list[tuple[int, int]]:
    """Run up to `num_merges` merges; new ids continue after `len(token_bytes)`. Returns the merged id pairs."""
    token_bytes = list(token_bytes)
    desc = [_desc(b) for b in token_bytes]
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    pair_words: dict[tuple[int, int], set[int]] = defaultdict(set)  # may hold stale word indices
    for wi, word in enumerate(words):
        f = freqs[wi]
        for pair in zip(word, word[1:]):
            pair_count[pair] += f
            pair_words[pair].add(wi)
    heap = [(-n, desc[a], desc[b], -a, -b) for (a, b), n in pair_count.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    while len(merges) < num_merges and heap:
        neg, _, _, na, nb = heapq.heappop(heap)
        a, b = -na, -nb
        if pair_count.get((a, b), 0) != -neg:  # stale entry: the count changed after it was pushed
            continue
        if neg >= 0:  # the greatest count left is 0: only words of frequency 0 hold pairs
            break
        new = len(token_bytes)
        token_bytes.append(token_bytes[a] + token_bytes[b])
        desc.append(_desc(token_bytes[new]))
        merges.append((a, b))

        changed: dict[tuple[int, int], None] = {}
        for wi in pair_words.pop((a, b)):
            word = words[wi]
            merged = _merge_word(word, a, b, new)
            if merged is None:
                continue
            f = freqs[wi]
            for pair in zip(word, word[1:]):
                pair_count[pair] -= f
                changed[pair] = None
            for pair in zip(merged, merged[1:]):
                pair_count[pair] += f
                changed[pair] = None
                pair_words[pair].add(wi)
            words[wi] = merged
        del pair_count[(a, b)]
        changed.pop((a, b), None)
        for pair in changed:
            n = pair_count[pair]
            if n > 0:
                heapq.heappush(heap, (-n, desc[pair[0]], desc[pair[1]], -pair[0], -pair[1]))
            else:
                del pair_count[pair]
        if progress is not None:
            progress(len(merges))
    return merges


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int] | None:
    """`word` with every non-overlapping (a, b), left to right, replaced by `new`; None if absent."""
    out: list[int] = []
    i, n, hit = 0, len(word), False
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
            hit = True
        else:
            out.append(word[i])
            i += 1
    return out if hit else None


def merge_loop(
    words: list[bytes],
    freqs: Sequence[int],
    token_bytes: list[bytes],
    num_merges: int,
    progress: Progress = None,
    backend: str = "auto",
) -> list[tuple[int, int]]:
    """Dispatch to the C core (`backend="c"`) or the Python reference (`"python"`); `"auto"` prefers C.

    `words` are the pre-tokens as bytes; byte value v has token id v (ids 0..255).
    """
    if backend not in ("auto", "c", "python"):
        raise ValueError(f"unknown BPE backend {backend!r}: expected auto, c or python")
    if backend == "c" and _bpe_core is None:
        raise RuntimeError("the compiled BPE core is not built (no C compiler at install?); use backend='python'")
    if backend == "python" or _bpe_core is None:
        if backend == "auto":
            log.warning(
                "compiled BPE core not available: using the pure-Python merge loop (same result, slower); "
                "install a C compiler (e.g. `apt-get install gcc`) and reinstall scratchlm (`pip install -e .`)"
            )
        return merge_loop_python([list(w) for w in words], freqs, token_bytes, num_merges, progress)
    from array import array

    ids = b"".join(words)  # uint8 byte values = initial token ids
    offsets = array("q", [0])
    total = 0
    for w in words:
        total += len(w)
        offsets.append(total)
    return _bpe_core.train_merges(ids, offsets, array("q", freqs), token_bytes, num_merges, progress)
