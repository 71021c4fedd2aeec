"""Build script for the optional compiled cores: BPE (training merge loop, per-pre-token encoding) and the
engine's paged decode attention on CPU.

Everything else is declared in pyproject.toml. The extension is `optional`: where no C compiler
is available the install still succeeds and `scratchlm.tokenizer` falls back to the pure-Python
reference code (same results, slower), saying so once; the engine to PyTorch ops.
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
    ]
    + [
        # paged decode attention on CPU (inference engine); without it the engine uses PyTorch ops (slower)
        Extension(
            "scratchlm.kernels._paged_decode",
            sources=["scratchlm/kernels/_paged_decode.c"],
            # -fassociative-math: the 8 partial sums of a dot product may become vector lanes
            extra_compile_args=["-O3", "-std=c99", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
        # int8 / int4 weight-only quantised linears for a few rows on CPU (compress); else dequantise + F.linear
        Extension(
            "scratchlm.kernels._quant_gemv",
            sources=["scratchlm/kernels/_quant_gemv.c"],
            extra_compile_args=["-O3", "-std=gnu99", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
    ],
)
