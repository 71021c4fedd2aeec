"""A tiny tokenizer and token files shared by the training tests."""

from __future__ import annotations

import pytest
from tiny_corpus import build_tiny_corpus


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """{"train", "valid", "tokenizer", "vocab_size"}: ~40k tokens of simple synthetic sentences, vocab 300."""
    return build_tiny_corpus(tmp_path_factory.mktemp("tiny_data"))
