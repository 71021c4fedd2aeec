"""Model runner: one forward for a scheduled batch of (sequence, number of new tokens) pairs.

Each row is a sequence's next chunk: a decode token, a whole prompt, or a piece of a long prompt
(chunked prefill). Rows with the same token count go through one forward as a (B, T) batch with
per-token positions and pool slots; the cache view is built (`paged_cache.py`: attention layers in
blocks; `state_slots.py`: recurrent layers in a slot per sequence), and the logits of the last new token
of each row are returned (only rows that reach the end of their known tokens sample).

Why one forward per token count rather than one right-padded batch: a step that mixes 60 decode rows
with a 500-token prefill chunk would push 60 x 500 rows through every matmul to compute 560 tokens. A
prefill forward is compute-bound, so reading the weights once more for it costs little; all decode rows
(T = 1) still share one forward, whose cost is reading the weights. (Padding would also change the state
of an S4D layer, `state_slots.PAD_SENSITIVE`: grouping keeps every row unpadded.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from scratchlm.infer.paged_cache import KVPool
from scratchlm.infer.state_slots import StateSlots


class ModelRunner:
    def __init__(self, model, num_blocks: int, block_size: int, max_num_seqs: int = 64):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.pool = KVPool(model, num_blocks, block_size)
        # recurrent layers: a state slot per running sequence (the scheduler allocates and frees them)
        self.slots = StateSlots(model, max_num_seqs) if "state" in self.pool.kinds else None
        self.block_size = block_size

    @torch.no_grad()
    def run(self, batch: list[tuple[object, int]]) -> Tensor:
        """batch: (seq, n) pairs; seq.token_ids[seq.num_computed_tokens : +n] are fed. Returns (B, V) float32
        logits of each row's last fed token."""
        groups: dict[int, list[int]] = {}
        for r, (_, n) in enumerate(batch):
            groups.setdefault(n, []).append(r)
        if len(groups) == 1:
            return self._forward(batch)
        parts = {n: self._forward([batch[r] for r in rows]) for n, rows in groups.items()}
        logits = torch.empty(len(batch), parts[batch[0][1]].shape[1], device=self.device)
        for n, rows in groups.items():
            logits[torch.tensor(rows, device=self.device)] = parts[n]
        return logits

    def _forward(self, batch: list[tuple[object, int]]) -> Tensor:
        B, T = len(batch), max(n for _, n in batch)
        bs = self.block_size
        ids = torch.zeros(B, T, dtype=torch.long)
        pos = torch.full((B, T), -1, dtype=torch.long)
        slots = torch.full((B, T), -1, dtype=torch.long)
        width = max(len(seq.block_table) for seq, _ in batch)
        tables = torch.full((B, width), -1, dtype=torch.long)
        ctx = torch.zeros(B, dtype=torch.long)
        last = torch.zeros(B, dtype=torch.long)
        for r, (seq, n) in enumerate(batch):
            start = seq.num_computed_tokens
            ids[r, :n] = torch.as_tensor(seq.token_ids[start : start + n])
            p = torch.arange(start, start + n)
            pos[r, :n] = p
            table = torch.as_tensor(seq.block_table, dtype=torch.long)
            tables[r, : len(table)] = table
            slots[r, :n] = table[p // bs] * bs + p % bs
            ctx[r], last[r] = start + n, n - 1
        dev = self.device
        states = self.slots.step([seq for seq, _ in batch]) if self.slots is not None else None
        step = self.pool.step(slots.to(dev), tables.to(dev), ctx.to(dev), states)
        hidden = self.model(ids.to(dev), cache=step, positions=pos.to(dev), output="hidden")  # (B, T, D)
        h = hidden[torch.arange(B, device=dev), last.to(dev)]  # (B, D)
        return self.model.head(h).float()  # (B, V)
