"""The per-step facts of one forward, passed to every block and mixer through `forward`.

    ctx = StepContext(positions, padded, rope, cache, rope_local)

No mixer reads a global or keeps per-step state on itself: what differs from call to call (which
positions the tokens sit at, which rows are padding, the rotary tables of those positions, the
generation cache) lives here, built once per forward by `TransformerLM.step_context`. The inference
engine and context parallelism build their own contexts (and install their own `attend`) without
editing the model.

Positions are per row, (B, T) (or (1, T), broadcast, when every row is the same, as in training):
left-padded batches of prompts of different lengths put -1 at the padding tokens, which no real
token attends to and which add nothing to recurrent states.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class StepContext:
    positions: Tensor  # (B, T) or (1, T) long: absolute position of each token; -1 = padding
    padded: bool  # some positions may be -1 (a Python bool, so `forward` has no data-dependent branch)
    rope: tuple[Tensor, Tensor] | None  # cos, sin (B|1, T, Dr) fp32 (RotaryEmbedding.tables), or None (no RoPE)
    cache: object | None = None  # a ModelCache (scratchlm.model.cache) or None (no generation state)
    # cos, sin of sliding-window layers that have a RoPE base of their own (config rope_local_theta), else None
    rope_local: tuple[Tensor, Tensor] | None = None

    def layer_cache(self, layer: int):
        """The generation state of layer `layer`, or None without a cache."""
        return None if self.cache is None else self.cache.layers[layer]

    @property
    def valid(self) -> Tensor:
        """(B|1, T) bool: True at real tokens, False at padding."""
        return self.positions >= 0


class _Layers:
    """A stand-in for ModelCache holding one layer's state at index `layer`."""

    def __init__(self, layer: int, state):
        self.layers = {layer: state}


def mixer_context(positions: Tensor, rope=None, layer_cache=None, layer: int = 0, rope_local=None) -> StepContext:
    """A context for calling one mixer on its own (tests, benchmarks): `positions` (T,) or (B, T);
    `rope` a RotaryEmbedding for RoPE mixers (`rope_local` that of sliding-window layers with their own
    base); `layer_cache` the mixer's own `new_cache(...)` state."""
    positions = positions if positions.dim() == 2 else positions[None]
    tables = rope.tables(positions) if rope is not None else None
    local = rope_local.tables(positions) if rope_local is not None else None
    cache = _Layers(layer, layer_cache) if layer_cache is not None else None
    return StepContext(positions, False, tables, cache, local)
