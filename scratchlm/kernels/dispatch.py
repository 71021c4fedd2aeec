"""Backend choice shared by every kernel's dispatch function, and the override the tests use.

Each op (attention, rms_norm, swiglu, linear_cross_entropy) takes `backend="auto"` or a name. "auto"
means: the Triton kernel on CUDA tensors when triton is importable and the shape is supported,
else the op's PyTorch fallback. `use_backend(name)` forces what "auto" picks inside a block (for
tests and benchmarks), for every op that has a backend of that name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from scratchlm.errors import ScratchLMError
from scratchlm.kernels._triton import log_once

_forced: list[str] = []


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, backend="auto" resolves to `name` wherever an op has that backend."""
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def choose(op: str, backend: str, backends: tuple[str, ...], triton_reason: str, fallback: str, on_cuda: bool) -> str:
    """The backend to run. `triton_reason` is '' when the Triton kernel can take these inputs, else why not.

    An explicit "triton" that cannot run is an error naming the reason; "auto" falls back to
    `fallback`, logging the reason once when the tensors are on CUDA (where Triton was expected)."""
    if backend not in backends:
        raise ScratchLMError(f"unknown {op} backend {backend!r}: expected one of {', '.join(backends)}")
    if backend == "auto":
        if _forced and _forced[-1] in backends and _forced[-1] != "auto":
            backend = _forced[-1]
        elif on_cuda and not triton_reason:  # never the (slow) interpreter unless asked for
            return "triton"
        else:
            if on_cuda:
                log_once(f"{op}: using {fallback} instead of the Triton kernel: {triton_reason}")
            return fallback
    if backend == "triton" and triton_reason:
        raise ScratchLMError(f"{op} backend 'triton' cannot run here: {triton_reason}")
    return backend
