"""Shared fixtures: paths to ../shared reference data (tests skip cleanly when it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Tiny models: one thread is ~10x faster than two fighting over a shared 2-core machine, and
# results do not depend on the thread count.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(rel: str) -> Path:
    path = SHARED / rel
    if not path.is_file():
        pytest.skip(f"reference data {rel} not found under ../shared/data (only on the project's machines)")
    return path


@pytest.fixture
def gpt2_files() -> tuple[Path, Path]:
    return shared_file("tokenizer/gpt2_vocab.json"), shared_file("tokenizer/gpt2_merges.txt")
