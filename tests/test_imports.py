"""Every module imports, and importing the package does no heavy work (no torch for the CLI)."""

import importlib
import pkgutil
import subprocess
import sys

import pytest

import scratchlm

# Modules that exist to bridge to an optional extra; they import only where that extra is installed.
OPTIONAL = {"scratchlm.eval.lm_eval_adapter": "lm_eval"}


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(scratchlm.__path__, "scratchlm.") if not m.name.endswith("__main__")]
    assert "scratchlm.tokenizer.train" in names
    for name in names:
        needs = OPTIONAL.get(name)
        if needs is not None and not _importable(needs):
            with pytest.raises(ModuleNotFoundError, match=needs):
                importlib.import_module(name)
            continue
        importlib.import_module(name)


def test_cli_and_tokenizer_do_not_import_torch():
    code = "import sys, scratchlm.cli, scratchlm.tokenizer; scratchlm.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_building_blocks_are_importable_from_scratchlm_model():
    import scratchlm.model as m

    for name in m.__all__:
        assert getattr(m, name) is not None, name
    from scratchlm.model import Block, CausalSelfAttention, GatedMLP, Linear, RMSNorm, RotaryEmbedding  # noqa: F401
