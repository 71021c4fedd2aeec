"""Shared fixtures (reference data paths come from shared_data.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from shared_data import shared_file

# Tiny models: one thread is ~10x faster than two fighting over a shared 2-core machine, and
# results do not depend on the thread count.
torch.set_num_threads(1)


@pytest.fixture
def gpt2_files() -> tuple[Path, Path]:
    return shared_file("tokenizer/gpt2_vocab.json"), shared_file("tokenizer/gpt2_merges.txt")
