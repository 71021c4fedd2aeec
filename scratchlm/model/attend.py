"""`attend`: the one callable that turns (q, k, v) into attention outputs, built once from the config.

    attend = build_attend(cfg)
    y = attend(q, k, v, causal=True)                          # q (B, H, T, Dh), k (B, K, S, Dh), v (B, K, S, Dv)
    y = attend(q, k, v, mask=mask, dropout_p=0.1)             # mask: bool (B|1, 1|H, T, S), True = may attend

Softmax attention and MLA call their `attend` and nothing else; which implementation runs is decided
here, once, from `cfg.attn_backend`, whose names are those of `scratchlm.kernels.attention` (sdpa,
naive, auto, triton, reference; "own" is the old name of "naive"). Context parallelism (ring
attention) and the paged inference engine replace it from outside: `TransformerLM.set_attend(fn)`
installs any callable with this signature in every attention layer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import Tensor

Attend = Callable[..., Tensor]  # (q, k, v, *, causal=False, mask=None, dropout_p=0.0, scale=None) -> y

ALIASES = {"own": "naive"}  # configs and checkpoints written before the names were shared with kernels


def backend_name(name: str) -> str:
    """The `scratchlm.kernels.attention` backend a config's `attn_backend` stands for."""
    return ALIASES.get(name, name)


def build_attend(cfg) -> Attend:
    """`scratchlm.kernels.attention` bound to the config's backend."""
    # Imported here so that building a config-only view of the model does not load the kernels package.
    from scratchlm.kernels.attention import BACKENDS, attention

    name = backend_name(cfg.attn_backend)
    if name not in BACKENDS:
        raise ValueError(f"unknown attn_backend {cfg.attn_backend!r}: expected one of {', '.join(BACKENDS)}")
    return functools.partial(attention, backend=name)
