"""Data: the embedded default corpus, dataset downloads, and (later) the web-data pipeline.

    from scratchlm.data.default_corpus import ensure_default_corpus   # offline-friendly Shakespeare
    from scratchlm.data.download import download_dataset              # TinyStories, OWT sample

Modules are imported where used; importing this package does nothing.
"""
