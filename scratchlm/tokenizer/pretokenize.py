"""Pre-tokenization: special-token splitting, the GPT-2 regex, and safe places to cut a stream.

BPE merges never cross a pre-token boundary, so training only needs pre-token *frequencies*,
and encoding can cache the ids of each distinct pre-token. Special tokens are cut out of the
text first: they are never merged with, or split into, ordinary text. The GPT-2 regex also has
a compiled twin (`_bpe_encode.pretokenize`), driven by the `unicode_classes()` table built here.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache

import regex

from scratchlm.errors import ScratchLMError

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


# Bits of `unicode_classes()`.
CLASS_LETTER, CLASS_NUMBER, CLASS_SPACE = 1, 2, 4


@lru_cache(maxsize=1)
def unicode_classes() -> bytes:
    r"""The GPT-2 pattern's character classes as a 0x110000-byte table, one byte per code point:
    CLASS_LETTER if `regex` matches it with \p{L}, | CLASS_NUMBER for \p{N}, | CLASS_SPACE for \s.

    The compiled pre-tokenizer (`_bpe_encode.pretokenize` / `encode_pretokens`) reads this table rather
    than Unicode data of its own. Built by running `regex` itself over a string of every code point, it
    agrees with `regex.findall(GPT2_PATTERN, ...)` by construction, whatever Unicode version `regex`
    ships (its \s is not `str.isspace`: U+001C..U+001F are not \s). The string includes the surrogates,
    which a str can hold and `regex` classifies like any character (as none of the three). ~0.1 s, once.
    """
    codec = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"
    everything = array("I", range(0x110000)).tobytes().decode(codec, "surrogatepass")  # "I": 4 bytes
    table = bytearray(0x110000)
    for bit, cls in ((CLASS_LETTER, r"\p{L}"), (CLASS_NUMBER, r"\p{N}"), (CLASS_SPACE, r"\s")):
        for m in regex.finditer(cls + "+", everything):
            a, b = m.span()
            table[a:b] = bytes(v | bit for v in table[a:b])
    return bytes(table)


def findall_function(pattern: str = GPT2_PATTERN) -> Callable[[str], list[str]]:
    """`regex.findall` of `pattern`, or for the GPT-2 pattern its compiled twin when it is built."""
    try:
        from scratchlm.tokenizer._bpe_encode import pretokenize  # type: ignore[attr-defined]
    except ImportError:
        pretokenize = None
    if pretokenize is None or pattern != GPT2_PATTERN:
        return compile_pattern(pattern).findall
    classes = unicode_classes()
    return lambda text: pretokenize(text, classes)


def check_special_tokens(special_tokens: Iterable[str]) -> list[str]:
    """Special tokens in first-seen order, duplicates dropped; each a non-empty string."""
    out: list[str] = []
    for s in special_tokens:
        if not isinstance(s, str) or not s:
            raise ScratchLMError(f"special tokens must be non-empty strings, got {s!r}")
        if s not in out:
            out.append(s)
    return out


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


def last_safe_cut(text: str, end: int | None = None) -> int:
    """Largest p <= end with 0 < p where text[:p] / text[p:] pre-tokenize independently; 0 if none."""
    m = _SAFE_CUT.search(text, 0, len(text) if end is None else end)
    return m.start() if m else 0


def stream_cut(text, splitter, keep: int, safe_cut: regex.Pattern = _SAFE_CUT) -> int:
    """Where a stream may be cut so that both sides tokenize exactly as the whole; 0 if nowhere yet.

    Candidates: just after the last special token, or a safe pre-token boundary (`safe_cut`, the
    last match before the bound) after it. The last `keep` characters (the longest special token)
    are never cut into, and neither is a special token that ends in them: a longer special token
    may still be arriving. Works on str, and on bytes given byte patterns (see `chunks.py`).
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
    m = safe_cut.search(text, last_end, bound)
    return m.start() if m and m.start() > 0 else last_end
