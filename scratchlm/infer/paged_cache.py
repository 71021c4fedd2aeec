"""The paged KV cache as the model sees it: a `ModelCache` stand-in whose layers write new keys and
values into a shared pool of fixed-size blocks and read back each sequence's keys through its block table.

    pool = KVPool(model, num_blocks=256, block_size=16)            # one (blocks, block_size, K, Dh) pair per layer
    cache = pool.step(slot_mapping, block_tables, context_lens)   # this step's view
    hidden = model(ids, cache=cache, positions=positions, output="hidden")

The model is not edited: softmax attention calls `cache.update(k, v, positions)` as it does with the
plain KV cache and builds its mask from the positions returned (causal, window, padding), so a step
may mix prefill chunks and decode tokens of different sequences, right-padded into one (B, T) batch.
This is the reference path (PyTorch gather + the model's `attend` with a mask); a paged decode kernel
plugs in under the same contract.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scratchlm.errors import ScratchLMError
from scratchlm.model.attention import CausalSelfAttention


def check_servable(model) -> None:
    """Every sequence mixer must be softmax attention (the only kind with a paged cache so far)."""
    bad = sorted(
        {type(b.attn.f).__name__ for b in model.blocks.values() if not isinstance(b.attn.f, CausalSelfAttention)}
    )
    if bad:
        raise ScratchLMError(
            f"the inference engine serves softmax-attention models; this model has {', '.join(bad)} layers "
            "(use scratchlm.model.generate for it)"
        )


class KVPool:
    """Preallocated keys and values of every attention layer: (num_blocks, block_size, K, Dh) each."""

    def __init__(self, model, num_blocks: int, block_size: int, device=None, dtype=None):
        check_servable(model)
        cfg = model.config
        p = next(model.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        shape = (num_blocks, block_size, cfg.kv_heads, cfg.dh)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.num_blocks, self.block_size = num_blocks, block_size

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def step(self, slot_mapping: Tensor, block_tables: Tensor, context_lens: Tensor) -> PagedStep:
        return PagedStep(self, slot_mapping, block_tables, context_lens)


class PagedStep:
    """One forward's view of the pool (what `ModelCache` is to `generate`).

    slot_mapping (B, T) long: pool slot (block * block_size + offset) of each new token, -1 at padding;
    block_tables (B, M) long: each row's blocks in order, -1 past its end; context_lens (B,) long: each
    row's token count after this step (cached + new)."""

    def __init__(self, pool: KVPool, slot_mapping: Tensor, block_tables: Tensor, context_lens: Tensor):
        self.pool = pool
        self.slot_mapping, self.block_tables, self.context_lens = slot_mapping, block_tables, context_lens
        S = int(context_lens.max())
        s = torch.arange(S, device=context_lens.device)
        blocks = block_tables[:, s // pool.block_size].clamp_min(0)  # (B, S)
        self.gather_slots = blocks * pool.block_size + s % pool.block_size  # (B, S)
        self.k_pos = torch.where(s < context_lens[:, None], s, -1)  # (B, S): -1 = no key
        self.layers = [_PagedLayer(self, i) for i in range(len(pool.k))]
        self.length = S - slot_mapping.shape[1]  # so that length + T = the longest row (learned positions' check)

    def advance(self, positions: Tensor) -> None:  # the model calls this after a forward; the runner keeps count
        pass


class _PagedLayer:
    def __init__(self, step: PagedStep, layer: int):
        self.step, self.layer = step, layer

    def update(self, k: Tensor, v: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Write (B, K, T, Dh) new keys/values to their slots; return every key/value of each row
        (B, K, S, Dh) x2 with positions (B, S) (-1 past the row's length)."""
        st, pool = self.step, self.step.pool
        kc, vc = pool.k[self.layer], pool.v[self.layer]
        K, Dh = kc.shape[2], kc.shape[3]
        flat_k, flat_v = kc.view(-1, K, Dh), vc.view(-1, K, Dh)
        slots = st.slot_mapping.reshape(-1)
        keep = slots >= 0
        flat_k[slots[keep]] = k.transpose(1, 2).reshape(-1, K, Dh)[keep].to(kc.dtype)
        flat_v[slots[keep]] = v.transpose(1, 2).reshape(-1, K, Dh)[keep].to(vc.dtype)
        keys = flat_k[st.gather_slots].transpose(1, 2)  # (B, K, S, Dh)
        values = flat_v[st.gather_slots].transpose(1, 2)
        return keys.to(k.dtype), values.to(v.dtype), st.k_pos
