"""Optional Triton: the import, interpreter detection, and stand-ins so kernel files import without it.

Triton is the optional extra `scratchlm[triton]`. Without it the kernel modules still import (their
`@triton.jit` functions become stubs that raise when launched) and every dispatch falls back to a
PyTorch implementation. `TRITON_INTERPRET=1`, set before triton is imported, runs the kernels on CPU
tensors with numpy (slow; used by the tests). It is read here, once, at import: kernels decorated
under the interpreter stay interpreted.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("scratchlm.kernels")

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
    MISSING_REASON = ""
except ImportError as e:  # the optional extra is not installed
    HAVE_TRITON = False
    MISSING_REASON = f"triton is not installed ({e}); install the extra: pip install 'scratchlm[triton]'"

    class _Launcher:
        """A kernel that cannot run: indexing it with a grid (a launch) raises with the reason."""

        def __init__(self, fn):
            self.__name__ = fn.__name__

        def __getitem__(self, grid):
            raise RuntimeError(f"cannot launch {self.__name__}: {MISSING_REASON}")

    class _Stub:
        """Just enough of `triton` / `triton.language` for the kernel files to define their kernels."""

        constexpr = object  # used only as an annotation
        Config = dict

        @staticmethod
        def jit(fn=None, **_):
            return _Launcher(fn) if fn is not None else _Launcher

        @staticmethod
        def autotune(*_, **__):
            return lambda f: f

    triton = tl = _Stub()

# The interpreter: numpy on CPU tensors. Its tl.dot on bf16 gives garbage, so the kernels upcast
# their tiles to fp32 before every dot when this is set.
INTERPRET = HAVE_TRITON and os.environ.get("TRITON_INTERPRET", "0") == "1"

_logged: set[str] = set()


def log_once(message: str) -> None:
    """A fallback or a copy the user should know about, logged (warning level) once per process."""
    if message not in _logged:
        _logged.add(message)
        log.warning(message)


def triton_usable(t) -> str:
    """'' if the Triton kernels can run on tensor `t`, else why not."""
    if not HAVE_TRITON:
        return MISSING_REASON
    if t.is_cuda:
        return ""
    if INTERPRET:
        return "" if t.device.type == "cpu" else f"the Triton interpreter runs on CPU tensors, got {t.device}"
    return (
        f"the Triton kernels need CUDA tensors, got {t.device} tensors "
        "(set TRITON_INTERPRET=1 before importing triton to run them on CPU, slowly)"
    )
