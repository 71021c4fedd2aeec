"""Paths to ../shared reference data: tests skip cleanly (with a reason) when it is absent.

A module of its own (not conftest.py): `from conftest import ...` would pick whichever conftest
pytest imported first (tests/train has one too).
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(rel: str) -> Path:
    path = SHARED / rel
    if not path.is_file():
        pytest.skip(f"reference data {rel} not found under ../shared/data (only on the project's machines)")
    return path
