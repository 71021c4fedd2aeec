"""Heuristic quality filters: Gopher's quality rules, C4's line filters, Gopher's repetition filters.

    gopher_quality_filter(text)           # True = keep (the four MassiveText rules below)
    gopher_quality_failures(text)         # names of the rules the text fails, [] = keep
    c4_line_filter(text)                  # (cleaned text, None) or ("", reason)
    repetition_failures(text)             # names of the repetition thresholds exceeded

Words are whitespace-separated tokens, as in MassiveText (Rae et al. 2021, "Scaling Language
Models: Methods, Analysis & Insights from Training Gopher", appendix A.1.1 and table A1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from scratchlm.data.hashing import ngram_hash_series, word_hashes
from scratchlm.errors import ScratchLMError

_LETTER = re.compile(r"[^\W\d_]")  # a Unicode letter


def _non_negative(cfg, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 0:
            raise ScratchLMError(f"{name} must be >= 0, got {getattr(cfg, name)}")


def _fractions(cfg, *names: str) -> None:
    for name in names:
        if not 0 <= getattr(cfg, name) <= 1:
            raise ScratchLMError(f"{name} must be a fraction in [0, 1], got {getattr(cfg, name)}")


@dataclass
class GopherRules:
    min_words: int = 50  # fewer words: too short to be a document
    max_words: int = 100_000  # more: dumps and listings
    min_mean_word_length: float = 3.0  # shorter mean word length: symbol or number soup
    max_mean_word_length: float = 10.0  # longer: URLs, hashes, run-together text
    max_ellipsis_line_fraction: float = 0.3  # more lines ending in "..." (or "…"): truncated snippets
    min_alpha_word_fraction: float = 0.8  # fewer words with a letter: tables of numbers, code, symbols

    def validate(self) -> None:
        _non_negative(self, "min_words", "max_words", "min_mean_word_length", "max_mean_word_length")
        _fractions(self, "max_ellipsis_line_fraction", "min_alpha_word_fraction")
        if self.min_words > self.max_words or self.min_mean_word_length > self.max_mean_word_length:
            raise ScratchLMError("min_words / min_mean_word_length must not exceed their max_ counterparts")


def gopher_quality_failures(text: str, rules: GopherRules | None = None) -> list[str]:
    r = rules or GopherRules()
    words = text.split()
    n = len(words)
    failed = []
    if n < r.min_words:
        failed.append("gopher_too_few_words")
    if n > r.max_words:
        failed.append("gopher_too_many_words")
    if n:
        mean = sum(map(len, words)) / n
        if not r.min_mean_word_length <= mean <= r.max_mean_word_length:
            failed.append("gopher_mean_word_length")
        alpha = sum(1 for w in words if _LETTER.search(w))
        if alpha / n < r.min_alpha_word_fraction:
            failed.append("gopher_alpha_words")
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        ellipsis = sum(1 for line in lines if line.rstrip().endswith(("...", "\u2026")))
        if ellipsis / len(lines) > r.max_ellipsis_line_fraction:
            failed.append("gopher_ellipsis_lines")
    return failed


def gopher_quality_filter(text: str, rules: GopherRules | None = None) -> bool:
    """True if `text` passes the Gopher quality rules (keep it)."""
    return not gopher_quality_failures(text, rules)


# ---------------------------------------------------------------------------------------------- C4


@dataclass
class C4Rules:
    """C4 (Raffel et al. 2020, section 2.2) as in the TFDS implementation; each rule can be switched off."""

    terminal_punctuation: bool = True  # keep only lines ending in . ! ? or a closing quote
    min_words_per_line: int = 3  # keep only lines with at least this many words
    min_sentences: int = 5  # drop pages with fewer sentences left
    max_word_length: int = 1000  # drop lines with a longer "word" (minified code, base64)
    remove_javascript_lines: bool = True  # "enable JavaScript" notices
    remove_policy_lines: bool = True  # cookie / privacy / terms-of-use boilerplate
    remove_citations: bool = True  # Wikipedia's [1], [edit], [citation needed]
    drop_lorem_ipsum: bool = True  # placeholder pages
    drop_curly_bracket: bool = True  # code (C4 drops the whole page on a "{")

    def validate(self) -> None:
        _non_negative(self, "min_words_per_line", "min_sentences", "max_word_length")


_TERMINAL = (".", "!", "?", '"', "\u201d", "'")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?]+(?:[\"'\u201d)\]]*)(?=\s|$)")


def c4_line_filter(text: str, rules: C4Rules | None = None) -> tuple[str, str | None]:
    """(kept lines joined by newlines, None), or ("", reason) when the page is dropped."""
    r = rules or C4Rules()
    low = text.lower()
    if r.drop_lorem_ipsum and "lorem ipsum" in low:
        return "", "c4_lorem_ipsum"
    if r.drop_curly_bracket and "{" in text:
        return "", "c4_curly_bracket"
    kept = []
    for line in text.splitlines():
        if r.remove_citations:
            line = _CITATION.sub("", line)
        line = line.strip()
        if not line:
            continue
        words = line.split()
        if r.terminal_punctuation and not line.endswith(_TERMINAL):
            continue
        if len(words) < r.min_words_per_line:
            continue
        if max(map(len, words)) > r.max_word_length:
            continue
        lower = line.lower()
        if r.remove_javascript_lines and "javascript" in lower:
            continue
        if r.remove_policy_lines and any(p in lower for p in _POLICY):
            continue
        kept.append(line)
    out = "\n".join(kept)
    if not kept:
        return "", "c4_no_lines_left"
    if r.min_sentences and len(_SENTENCE_END.findall(out)) < r.min_sentences:
        return "", "c4_too_few_sentences"
    return out, None


# ---------------------------------------------------------------------------------------------- repetition


@dataclass
class RepetitionRules:
    """Gopher table A1 thresholds: a document is dropped when any fraction exceeds its limit."""

    max_dup_line_fraction: float = 0.30  # lines that are repeats of an earlier line
    max_dup_paragraph_fraction: float = 0.30  # paragraphs (blank-line separated) that are repeats
    max_dup_line_char_fraction: float = 0.20  # characters in repeated lines
    max_dup_paragraph_char_fraction: float = 0.20  # characters in repeated paragraphs
    # characters covered by the most frequent n-gram, n = 2, 3, 4
    max_top_ngram_char_fraction: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])
    # characters covered by n-grams that occur more than once, n = 5 .. 10
    max_dup_ngram_char_fraction: list[float] = field(default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10])

    def validate(self) -> None:
        _fractions(self, *(f for f in self.__dataclass_fields__ if not f.endswith("ngram_char_fraction")))
        for name, n in (("max_top_ngram_char_fraction", 3), ("max_dup_ngram_char_fraction", 6)):
            values = getattr(self, name)
            if len(values) != n or not all(0 <= v <= 1 for v in values):
                raise ScratchLMError(f"{name} must be {n} fractions in [0, 1], got {values}")


def _dup_stats(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of characters in those repeats)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup = dup_chars = total_chars = 0
    for x in items:
        total_chars += len(x)
        if x in seen:
            dup += 1
            dup_chars += len(x)
        else:
            seen.add(x)
    return dup / len(items), dup_chars / max(total_chars, 1)


def _ngram_char_fractions(words: list[str], rules: RepetitionRules) -> list[str]:
    """The n-gram rules, vectorised over uint64 n-gram hashes (64-bit: collisions are negligible).

    top n-gram (n = 2..4): characters of the most frequent n-gram times its count, over all word characters.
    duplicate n-grams (n = 5..10): characters of words covered by an n-gram that already occurred earlier;
    a word inside several repeats counts once (Gopher: overlapping n-grams are not counted twice).
    """
    wh = word_hashes(words)
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    cum = np.concatenate([[0], np.cumsum(lengths)])
    total = int(cum[-1])
    series = ngram_hash_series(wh, 10)  # series[n - 1]: the n-gram hashes
    failed = []
    for n, limit in zip(range(2, 5), rules.max_top_ngram_char_fraction):
        if len(words) < n:
            break
        _, first, counts = np.unique(series[n - 1], return_index=True, return_counts=True)
        k = int(counts.argmax())
        if counts[k] > 1 and (cum[first[k] + n] - cum[first[k]]) * counts[k] / total > limit:
            failed.append(f"rep_top_{n}gram")
            break
    for n, limit in zip(range(5, 11), rules.max_dup_ngram_char_fraction):
        if len(words) < n:
            break
        grams = series[n - 1]  # (W-n+1,)
        order = np.argsort(grams, kind="stable")  # equal hashes keep position order: the first is the original
        sorted_grams = grams[order]
        repeat = np.zeros(grams.size, dtype=bool)
        repeat[order[1:]] = sorted_grams[1:] == sorted_grams[:-1]
        starts = np.flatnonzero(repeat)
        delta = np.zeros(len(words) + 1, dtype=np.int64)  # +1 where a repeat starts, -1 after its n words
        np.add.at(delta, starts, 1)
        np.add.at(delta, starts + n, -1)
        covered = np.cumsum(delta[:-1]) > 0
        if lengths[covered].sum() / total > limit:
            failed.append(f"rep_dup_{n}gram")
            break
    return failed


def repetition_failures(text: str, rules: RepetitionRules | None = None) -> list[str]:
    r = rules or RepetitionRules()
    failed = []
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    frac, chars = _dup_stats(lines)
    if frac > r.max_dup_line_fraction:
        failed.append("rep_dup_lines")
    if chars > r.max_dup_line_char_fraction:
        failed.append("rep_dup_line_chars")
    frac, chars = _dup_stats(paragraphs)
    if frac > r.max_dup_paragraph_fraction:
        failed.append("rep_dup_paragraphs")
    if chars > r.max_dup_paragraph_char_fraction:
        failed.append("rep_dup_paragraph_chars")
    words = text.split()
    if words and any(words):
        failed += _ngram_char_fractions(words, r)
    return failed
