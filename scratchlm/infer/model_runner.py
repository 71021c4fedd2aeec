"""Model runner: one forward for a scheduled batch of (sequence, number of new tokens) pairs.

Each row is a sequence's next chunk: a decode token, a whole prompt, or a piece of a long prompt
(chunked prefill). Rows are right-padded into one (B, T) batch with per-token positions (-1 at
padding) and pool slots, the paged cache view is built (`paged_cache.py`), and the logits of the
last new token of each row are returned (only rows that reach the end of their known tokens sample).
"""

from __future__ import annotations

import torch
from torch import Tensor

from scratchlm.infer.paged_cache import KVPool


class ModelRunner:
    def __init__(self, model, num_blocks: int, block_size: int):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.pool = KVPool(model, num_blocks, block_size)
        self.block_size = block_size

    @torch.no_grad()
    def run(self, batch: list[tuple[object, int]]) -> Tensor:
        """batch: (seq, n) pairs; seq.token_ids[seq.num_computed_tokens : +n] are fed. Returns (B, V) float32
        logits of each row's last fed token."""
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
        step = self.pool.step(slots.to(dev), tables.to(dev), ctx.to(dev))
        hidden = self.model(ids.to(dev), cache=step, positions=pos.to(dev), output="hidden")  # (B, T, D)
        h = hidden[torch.arange(B, device=dev), last.to(dev)]  # (B, D)
        return self.model.head(h).float()  # (B, V)
