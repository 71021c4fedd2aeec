"""The engine's cache as the model sees it: a `ModelCache` stand-in whose attention layers write their new
per-token entries into a shared pool of fixed-size blocks and read back each sequence's entries through its
block table, and whose recurrent layers read and write a state slot per sequence (`state_slots.py`).

    pool = KVPool(model, num_blocks=256, block_size=16)           # per attention layer, two block tensors
    cache = pool.step(slot_mapping, block_tables, context_lens, states)   # this step's view
    hidden = model(ids, cache=cache, positions=positions, output="hidden")

What each mixer keeps (`check_servable` says, or refuses the model):
- softmax attention ("kv"): keys and values, (num_blocks, block_size, K, Dh) each;
- MLA ("latent"): its normalised latent and shared rotated RoPE key, (num_blocks, block_size, R) and
  (.., Dr), the same block tables and slots (Dr = 0 without RoPE);
- linear attention and S4D ("state"): a constant-size recurrent state in a slot per running sequence,
  not in blocks (`state_slots.StateSlots`).

The model is not edited: softmax attention calls `cache.update(k, v, positions)` and MLA
`cache.update(c_kv, k_rope, positions)` as they do with their plain caches, and build their masks from the
positions returned (causal, window, padding), so a step may mix prefill chunks and decode tokens of
different sequences, right-padded into one (B, T) batch (the reference path: PyTorch gather + the
model's `attend` with a mask).

Decode steps (one new token per row, no padding) take the fast path instead: softmax attention asks its
cache for `decode_attention(q, k, v, window, scale)` first, and the paged view answers by writing the new
keys and values to their slots and running `kernels.paged_attention` over the blocks (the Triton kernel on
CUDA, the tiled online-softmax on CPU), so no row's keys are gathered into a padded dense tensor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scratchlm.errors import ScratchLMError
from scratchlm.kernels.paged_attention import paged_attention
from scratchlm.model.attention import CausalSelfAttention
from scratchlm.model.linear_attention import LinearAttention
from scratchlm.model.mla import MultiHeadLatentAttention
from scratchlm.model.ssm import S4DMixer

# Where the engine keeps each mixer's generation state: per-token entries in blocks ("kv", "latent") or a
# recurrent state in a slot per sequence ("state").
STORAGE = {CausalSelfAttention: "kv", MultiHeadLatentAttention: "latent", LinearAttention: "state", S4DMixer: "state"}


def check_servable(model) -> list[str]:
    """The storage kind of every layer (see STORAGE); a clear error naming what the engine cannot serve."""
    kinds, bad = [], {}
    for i, block in enumerate(model.blocks.values()):
        kind = STORAGE.get(type(block.mixer))
        kinds.append(kind)
        if kind is None:
            bad.setdefault(type(block.mixer).__name__, []).append(i)
    if bad:
        names = "; ".join(f"{name} (layers {', '.join(map(str, layers))})" for name, layers in bad.items())
        raise ScratchLMError(
            f"the inference engine has no cache for these mixers: {names}; it serves softmax attention and MLA "
            "(paged), linear attention and S4D (state slots). Use scratchlm.model.generate for this model"
        )
    moe = model.config.moe
    if moe.num_experts and moe.capacity_factor > 0:
        raise ScratchLMError(
            f"the inference engine cannot serve MoE with capacity_factor={moe.capacity_factor}: tokens of a step "
            "(other requests, padding) compete for expert capacity, so a request's output would depend on its "
            "batch. Set model.config.moe.capacity_factor = 0 (dropless: same weights) to serve it"
        )
    return kinds


def token_shapes(model) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
    """{layer: per-token shapes of its two block tensors} for the layers paged in blocks."""
    shapes = {}
    for i, (block, kind) in enumerate(zip(model.blocks.values(), check_servable(model))):
        m = block.mixer
        if kind == "kv":
            shapes[i] = ((m.kv_heads, m.head_dim), (m.kv_heads, m.head_dim))
        elif kind == "latent":
            shapes[i] = ((m.latent_dim,), (m.rope_dim,))
    return shapes


def bytes_per_block(model, block_size: int, dtype: torch.dtype | None = None) -> int:
    """Pool bytes of one block over all paged layers (0 for a model of recurrent layers only)."""
    size = (dtype or next(model.parameters()).dtype).itemsize
    return sum(block_size * (math.prod(a) + math.prod(b)) * size for a, b in token_shapes(model).values())


class KVPool:
    """Preallocated blocks of every paged layer: `layers[i]` = two (num_blocks, block_size, ...) tensors (keys
    and values, or MLA's latent and RoPE key). `kinds[i]` is each layer's storage kind."""

    def __init__(self, model, num_blocks: int, block_size: int, device=None, dtype=None):
        self.kinds = check_servable(model)
        p = next(model.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        self.layers = {
            i: tuple(torch.zeros(num_blocks, block_size, *s, device=device, dtype=dtype) for s in pair)
            for i, pair in token_shapes(model).items()
        }
        self.num_blocks, self.block_size = num_blocks, block_size

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.layers.values() for t in pair)

    def step(self, slot_mapping: Tensor, block_tables: Tensor, context_lens: Tensor, states=None) -> PagedStep:
        return PagedStep(self, slot_mapping, block_tables, context_lens, states)


class PagedStep:
    """One forward's view of the pool (what `ModelCache` is to `generate`).

    slot_mapping (B, T) long: pool slot (block * block_size + offset) of each new token, -1 at padding;
    block_tables (B, M) long: each row's blocks in order, -1 past its end; context_lens (B,) long: each
    row's token count after this step (cached + new); states: the rows' recurrent states
    (`state_slots.StateStep`), needed when the model has recurrent layers."""

    def __init__(self, pool: KVPool, slot_mapping: Tensor, block_tables: Tensor, context_lens: Tensor, states=None):
        self.pool, self.states = pool, states
        self.slot_mapping, self.block_tables, self.context_lens = slot_mapping, block_tables, context_lens
        # so that length + T = the longest row (learned positions' check; the gather's width)
        self.length = int(context_lens.max()) - slot_mapping.shape[1]
        flat = slot_mapping.reshape(-1)
        self.keep = flat >= 0  # (B*T,) the real tokens
        self.decode = slot_mapping.shape[1] == 1 and bool(self.keep.all())  # one new token per row, no padding
        self.write_slots = flat if self.decode else flat[self.keep]
        self._gather = None  # (gather_slots, k_pos): built by the first layer that gathers (not at decode steps)
        if states is None and "state" in pool.kinds:
            raise ScratchLMError("this model has recurrent layers: a step needs their states (state_slots.StateStep)")
        view = {"kv": _PagedKV, "latent": _PagedLatent}
        self.layers = [
            states.layers[i] if kind == "state" else view[kind](self, *pool.layers[i])
            for i, kind in enumerate(pool.kinds)
        ]

    def _gather_plan(self) -> tuple[Tensor, Tensor]:
        if self._gather is None:
            bs, lens = self.pool.block_size, self.context_lens
            s = torch.arange(self.length + self.slot_mapping.shape[1], device=lens.device)  # (S,)
            blocks = self.block_tables[:, s // bs].clamp_min(0)  # (B, S)
            self._gather = blocks * bs + s % bs, torch.where(s < lens[:, None], s, -1)  # -1 = no key
        return self._gather

    @property
    def gather_slots(self) -> Tensor:
        """(B, S) the pool slot of each row's every position (some block's where past the row's length)."""
        return self._gather_plan()[0]

    @property
    def k_pos(self) -> Tensor:
        """(B, S) the position of each gathered key, -1 past the row's length."""
        return self._gather_plan()[1]

    def advance(self, positions: Tensor) -> None:
        """The model calls this after a forward: the rows' new recurrent states go back to their slots (the
        paged layers wrote theirs during the forward; the runner keeps count of tokens)."""
        if self.states is not None:
            self.states.commit()

    def store(self, pool_t: Tensor, new: Tensor) -> Tensor:
        """Write this step's (B, T, ...) new entries of one block tensor to their slots; return every entry of
        each row, (B, S, ...), in the caller's dtype (entries past a row's length are some block's: masked)."""
        flat = pool_t.view(pool_t.shape[0] * pool_t.shape[1], *pool_t.shape[2:])  # (slots, ...)
        B, T = new.shape[:2]
        flat[self.write_slots] = new.reshape(B * T, *new.shape[2:])[self.keep].to(flat.dtype)
        return flat[self.gather_slots].to(new.dtype)


class _PagedKV:
    """Softmax attention's layer cache (`KVCache`'s interface) over the pool."""

    def __init__(self, step: PagedStep, k: Tensor, v: Tensor):
        self.step, self.k, self.v = step, k, v

    def decode_attention(self, q: Tensor, k: Tensor, v: Tensor, window: int | None, scale: float | None):
        """At a decode step: write the (B, K, 1, Dh) new keys/values to their slots and attend the (B, H, 1, Dh)
        queries over each row's blocks -> (B, H, 1, Dh). None otherwise (the model then calls `update`)."""
        step = self.step
        if not step.decode:
            return None
        slots = step.write_slots
        for pool_t, new in ((self.k, k), (self.v, v)):
            flat = pool_t.view(-1, *pool_t.shape[2:])  # (slots, K, Dh)
            flat.index_copy_(0, slots, new[:, :, 0].to(flat.dtype))
        y = paged_attention(q[:, :, 0], self.k, self.v, step.block_tables, step.context_lens, scale, window or 0)
        return y[:, :, None]

    def update(self, k: Tensor, v: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Write (B, K, T, Dh) new keys/values to their slots; return every key/value of each row
        (B, K, S, Dh) x2 with positions (B, S) (-1 past the row's length)."""
        keys = self.step.store(self.k, k.transpose(1, 2)).transpose(1, 2)  # (B, K, S, Dh)
        values = self.step.store(self.v, v.transpose(1, 2)).transpose(1, 2)
        return keys, values, self.step.k_pos


class _PagedLatent:
    """MLA's layer cache (`LatentCache`'s interface) over the pool."""

    def __init__(self, step: PagedStep, c_kv: Tensor, k_rope: Tensor):
        self.step, self.c_kv, self.k_rope = step, c_kv, k_rope

    def update(self, c_kv: Tensor, k_rope: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Write (B, T, R) latents and (B, T, Dr) RoPE keys to their slots; return every latent and key of
        each row, (B, S, R) and (B, S, Dr), with positions (B, S) (-1 past the row's length)."""
        return self.step.store(self.c_kv, c_kv), self.step.store(self.k_rope, k_rope), self.step.k_pos
