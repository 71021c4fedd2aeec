"""Progress bars (tqdm) that can be switched off without changing the calling code."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm


@contextlib.contextmanager
def progress_bar(enabled: bool, **kwargs: Any) -> Iterator[tqdm]:
    """A tqdm bar on stderr (rate, ETA); a silent one when `enabled` is False."""
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    with tqdm(disable=not enabled, file=sys.stderr, **kwargs) as bar:
        yield bar
