"""State slots: the generation state of mixers with a constant-size recurrent state (linear attention, S4D),
one slot per running sequence, instead of blocks.

    slots = StateSlots(model, num_slots=max_num_seqs)
    slots.allocate(seq)                   # admission: a free slot, its state reset to a fresh cache's
    step = slots.step([seq_a, seq_b])     # this forward's rows: each layer's slots gathered into a (B, ...) batch
    model(ids, cache=pool.step(..., states=step), positions=positions)  # the model's advance() calls step.commit()
    slots.free(seq)                       # finished, aborted or preempted (preemption recomputes from token 0)

Each layer's pool is the mixer's own `new_cache(num_slots, ...)`, and the view a forward sees is a copy of
it holding the step's rows (tensors gathered by slot): an object of the plain cache's class, which the
unedited mixer reads and updates as in `generate`; `commit` scatters the rows' tensors back to their slots.
A chunked prefill continues its state across steps; a preempted sequence gets a fresh slot.

Padding: a step is right-padded (positions -1 after a row's tokens). Linear attention multiplies phi(k)
and v by 0 at padding, so padding adds nothing to its sums. S4D zeroes its input at padding, which keeps a
zero state zero (left padding in `generate`), but a carried state still decays over a padding token
(s_t = exp(dt A) s_{t-1} + 0): after right padding its state would be p tokens too old. Undoing that decay
(dividing by exp(dt A)^p) underflows for long pads, so the runner gives layers in PAD_SENSITIVE steps
without padding instead: rows grouped by their token count, one forward per group (`needs_unpadded_rows`).
"""

from __future__ import annotations

import copy
from collections import deque

import torch
from torch import Tensor

from scratchlm.errors import ScratchLMError
from scratchlm.infer.paged_cache import check_servable
from scratchlm.model.ssm import S4DMixer

PAD_SENSITIVE = (S4DMixer,)  # recurrent mixers whose state a (right) padding token changes


def _tensors(cache) -> dict[str, Tensor]:
    return {name: t for name, t in vars(cache).items() if isinstance(t, Tensor)}


class StateSlots:
    """`num_slots` states of every recurrent layer (`pools[layer]`, the mixer's own cache class), and which
    sequence holds which slot."""

    def __init__(self, model, num_slots: int, device=None, dtype=None):
        if num_slots < 1:
            raise ScratchLMError(f"StateSlots needs num_slots >= 1, got {num_slots}")
        p = next(model.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        kinds = check_servable(model)
        mixers = {i: b.mixer for i, (b, kind) in enumerate(zip(model.blocks.values(), kinds)) if kind == "state"}
        # max_len = 1: a recurrent state's size does not depend on it
        self.pools = {i: m.new_cache(num_slots, 1, device, dtype) for i, m in mixers.items()}
        self.fresh = {i: m.new_cache(1, 1, device, dtype) for i, m in mixers.items()}  # what a new slot holds
        for i, pool in self.pools.items():
            bad = [n for n, t in _tensors(pool).items() if t.shape[0] != num_slots]
            if bad:
                raise ScratchLMError(f"layer {i}: {type(pool).__name__}.{bad[0]} is not one state per row")
        self.needs_unpadded_rows = any(isinstance(m, PAD_SENSITIVE) for m in mixers.values())
        self.num_slots = num_slots
        self._free: deque[int] = deque(range(num_slots))
        self._slot: dict[int, int] = {}  # seq_id -> slot

    @property
    def num_free_slots(self) -> int:
        return len(self._free)

    def slot(self, seq) -> int:
        return self._slot[seq.seq_id]

    def allocate(self, seq) -> int:
        """A free slot for the sequence, reset to a fresh state (it starts, or restarts, at token 0)."""
        if seq.seq_id in self._slot:
            raise ScratchLMError(f"sequence {seq.seq_id} already holds state slot {self._slot[seq.seq_id]}")
        if not self._free:
            raise ScratchLMError(f"no free state slot for sequence {seq.seq_id}: all {self.num_slots} are in use")
        s = self._free.popleft()
        for i, pool in self.pools.items():
            fresh = _tensors(self.fresh[i])
            for name, t in _tensors(pool).items():
                t[s] = fresh[name][0]
        self._slot[seq.seq_id] = s
        return s

    def free(self, seq) -> None:
        """Give the sequence's slot back (no-op when it holds none, e.g. aborted while waiting)."""
        s = self._slot.pop(seq.seq_id, None)
        if s is not None:
            self._free.append(s)

    def step(self, seqs: list) -> StateStep:
        """The states of these sequences (one row each, in order) for one forward."""
        rows = torch.tensor([self.slot(s) for s in seqs], dtype=torch.long)
        return StateStep(self, rows)


class StateStep:
    """`layers[i]`: layer i's cache for the step's rows (a copy of the pool object holding the gathered rows);
    `commit()` writes them back to their slots."""

    def __init__(self, slots: StateSlots, rows: Tensor):
        self.slots = slots
        self.layers = {}
        for i, pool in slots.pools.items():
            view = copy.copy(pool)  # the plain cache's class and non-tensor fields
            for name, t in _tensors(pool).items():
                setattr(view, name, t[rows.to(t.device)])  # (B, ...) gathered copy
            self.layers[i] = view
        self.rows = rows

    def commit(self) -> None:
        for i, pool in self.slots.pools.items():
            view = self.layers[i]
            for name, t in _tensors(pool).items():
                t[self.rows.to(t.device)] = getattr(view, name).to(t.dtype)
