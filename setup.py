"""Build script for the optional compiled BPE merge loop.

Everything else is declared in pyproject.toml. The extension is `optional`: where no C compiler
is available the install still succeeds and `scratchlm.tokenizer` falls back to the pure-Python
merge loop (same merges, slower), saying so once.
"""

from setuptools import Extension, find_packages, setup

setup(
    packages=find_packages(include=["scratchlm", "scratchlm.*"]) + ["scratchlm.configs"],
    ext_modules=[
        Extension(
            "scratchlm.tokenizer._bpe_core",
            sources=["scratchlm/tokenizer/_bpe_core.c"],
            extra_compile_args=["-O3", "-std=c99"],
            optional=True,
        )
    ],
)
