"""Data: the default corpus, dataset downloads, and the web-data pipeline.

    from scratchlm.data import extract_text, identify_language, mask_emails, gopher_quality_filter, minhash_dedup
    from scratchlm.data.default_corpus import ensure_default_corpus   # offline-friendly Shakespeare
    from scratchlm.data.download import download_dataset              # TinyStories, OWT sample

Every stage is a plain function on one document (the names below); `scratchlm data run
pipeline.toml` chains them over shards (`runner.py`). Names are resolved on first use, so importing
this package loads nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "Document": "document",
    "read_documents": "readers",
    "ReadOptions": "readers",
    "extract_text": "extract",
    "identify_language": "langid",
    "mask_emails": "pii",
    "mask_phone_numbers": "pii",
    "mask_ips": "pii",
    "classify_nsfw": "harmful",
    "classify_toxic_speech": "harmful",
    "classify_quality": "quality_model",
    "train_quality_model": "quality_model",
    "load_quality_model": "quality_model",
    "gopher_quality_filter": "quality_rules",
    "gopher_quality_failures": "quality_rules",
    "c4_line_filter": "quality_rules",
    "repetition_failures": "quality_rules",
    "exact_dedup": "dedup",
    "exact_line_dedup": "dedup",
    "minhash_dedup": "dedup",
    "PipelineConfig": "pipeline",
    "load_pipeline": "runner",
    "run_pipeline": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scratchlm.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"scratchlm.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
