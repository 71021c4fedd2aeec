"""Build script for the optional compiled BPE cores (training merge loop, per-pre-token encoding).

Everything else is declared in pyproject.toml. The extension is `optional`: where no C compiler
is available the install still succeeds and `scratchlm.tokenizer` falls back to the pure-Python
reference code (same results, slower), saying so once.
"""

from setuptools import Extension, find_packages, setup

setup(
    packages=find_packages(include=["scratchlm", "scratchlm.*"]) + ["scratchlm.configs"],
    ext_modules=[
        Extension(
            f"scratchlm.tokenizer.{name}",
            sources=[f"scratchlm/tokenizer/{name}.c"],
            extra_compile_args=["-O3", "-std=c99"],
            optional=True,
        )
        for name in ("_bpe_core", "_bpe_encode")  # merge loop (training), merges of one pre-token (encoding)
    ],
)
