"""Pre-tokenization: special-token splitting, the GPT-2 regex, and safe places to cut a stream.

BPE merges never cross a pre-token boundary, so training only needs pre-token *frequencies*,
and encoding can cache the ids of each distinct pre-token. Special tokens are cut out of the
text first: they are never merged with, or split into, ordinary text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

import regex

# GPT-2's split pattern (Radford et al. 2019, openai/gpt-2 encoder.py).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# A cut just before a space that is followed by a non-space character is always a pre-token
# boundary of GPT-2's regex, and the two sides split alone give the same pre-tokens as the
# whole: ' ?X+' starts a new token at the space, and a whitespace run to its left ends right
# there both with and without the rest of the text (`\s+(?!\S)` stops before the last space).
# This is what lets training, `encode_iterable` and corpus encoding work on bounded pieces.
_SAFE_CUT = regex.compile(r"(?r) (?=\S)")


def compile_pattern(pattern: str = GPT2_PATTERN) -> regex.Pattern:
    return regex.compile(pattern)


def special_splitter(special_tokens: Iterable[str]) -> regex.Pattern | None:
    """A pattern matching any special token; longest first, so overlapping tokens resolve to the longest."""
    specials = sorted(set(special_tokens), key=lambda s: (-len(s), s))
    if not specials:
        return None
    return regex.compile("|".join(regex.escape(s) for s in specials))


def split_special(text: str, splitter: regex.Pattern | None) -> Iterator[tuple[str, bool]]:
    """Yield (piece, is_special) in order; empty ordinary pieces are skipped."""
    if splitter is None:
        if text:
            yield text, False
        return
    pos = 0
    for m in splitter.finditer(text):
        if m.start() > pos:
            yield text[pos : m.start()], False
        yield m.group(), True
        pos = m.end()
    if pos < len(text):
        yield text[pos:], False


def count_pretokens(text: str, special_tokens: Iterable[str] = (), pattern: str = GPT2_PATTERN) -> Counter[str]:
    """Frequencies of the pre-tokens of `text`, special tokens removed (they split the text)."""
    pat = compile_pattern(pattern)
    counts: Counter[str] = Counter()
    for piece, is_special in split_special(text, special_splitter(special_tokens)):
        if not is_special:
            counts.update(pat.findall(piece))
    return counts


def last_safe_cut(text: str, end: int | None = None) -> int:
    """Largest p <= end with 0 < p where text[:p] / text[p:] pre-tokenize independently; 0 if none."""
    m = _SAFE_CUT.search(text, 0, len(text) if end is None else end)
    return m.start() if m else 0


def stream_cut(text: str, splitter: regex.Pattern | None, keep: int) -> int:
    """Where a stream may be cut so that both sides tokenize exactly as the whole; 0 if nowhere yet.

    Candidates: just after the last special token, or a safe pre-token boundary after it. The last
    `keep` characters (the longest special token) are never cut into, and neither is a special
    token that ends in them: a longer special token may still be arriving.
    """
    limit = len(text) - keep
    if limit <= 0:
        return 0
    last_end, bound = 0, limit
    if splitter is not None:
        for m in splitter.finditer(text):
            if m.end() > limit:
                bound = min(bound, m.start())
                break
            last_end = m.end()
    return max(last_end, last_safe_cut(text, bound))
