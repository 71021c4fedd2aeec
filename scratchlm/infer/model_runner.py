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
    def run(self, batch: list[tuple[object, int]], num_logits: list[int] | None = None) -> Tensor:
        """batch: (seq, n) pairs; seq.token_ids[seq.num_computed_tokens : +n] are fed. Returns float32 logits of
        each row's last fed token, (B, V); with num_logits, of each row's last num_logits[r] fed tokens, stacked
        row after row, (sum(num_logits), V) (speculative verification)."""
        counts = num_logits or [1] * len(batch)
        groups: dict[int, list[int]] = {}
        for r, (_, n) in enumerate(batch):
            groups.setdefault(n, []).append(r)
        if len(groups) == 1:
            return self._forward(batch, counts)
        parts = {n: self._forward([batch[r] for r in rows], [counts[r] for r in rows]) for n, rows in groups.items()}
        starts = [0]
        for c in counts:
            starts.append(starts[-1] + c)
        logits = torch.empty(starts[-1], next(iter(parts.values())).shape[1], device=self.device)
        for n, rows in groups.items():
            dest = torch.tensor([i for r in rows for i in range(starts[r], starts[r + 1])], device=self.device)
            logits[dest] = parts[n]
        return logits

    def _forward(self, batch: list[tuple[object, int]], counts: list[int]) -> Tensor:
        # The step's metadata as one Python list per tensor and a few whole-batch torch ops: per-row tensor
        # ops would cost ~10 small ops per sequence per step (a few ms at 64 rows on CPU).
        B, T = len(batch), max(n for _, n in batch)
        bs, dev = self.block_size, self.device
        width = max(len(seq.block_table) for seq, _ in batch)
        start = torch.tensor([seq.num_computed_tokens for seq, _ in batch])  # (B,)
        n = torch.tensor([n for _, n in batch])  # (B,)
        tables = torch.tensor([seq.block_table + [-1] * (width - len(seq.block_table)) for seq, _ in batch])  # (B, M)
        if T == 1:  # decode rows: one token each, no padding
            ids = torch.tensor([[seq.token_ids[seq.num_computed_tokens]] for seq, _ in batch])  # (B, 1)
            pos = start[:, None]  # (B, 1)
            slots = tables.gather(1, pos // bs) * bs + pos % bs  # (B, 1)
        else:
            ids = torch.tensor(
                [
                    seq.token_ids[seq.num_computed_tokens : seq.num_computed_tokens + k] + [0] * (T - k)
                    for seq, k in batch
                ]
            )  # (B, T), right-padded
            col = torch.arange(T)
            real = col < n[:, None]  # (B, T)
            pos = torch.where(real, start[:, None] + col, -1)  # (B, T), -1 at padding
            p = pos.clamp_min(0)
            slots = torch.where(real, tables.gather(1, p // bs) * bs + p % bs, -1)  # (B, T) pool slot of each token
        ctx = start + n  # (B,) tokens in the cache after this step
        states = self.slots.step([seq for seq, _ in batch]) if self.slots is not None else None
        step = self.pool.step(slots.to(dev), tables.to(dev), ctx.to(dev), states)
        hidden = self.model(ids.to(dev), cache=step, positions=pos.to(dev), output="hidden")  # (B, T, D)
        if T == 1 and all(c == 1 for c in counts):
            h = hidden[:, 0]  # (B, D)
        else:  # the (row, position) of every returned logit row: each row's last counts[r] fed tokens
            c = torch.tensor(counts)
            rows = torch.repeat_interleave(torch.arange(B), c)  # (sum(counts),)
            ends = torch.cumsum(c, 0)
            cols = torch.arange(int(ends[-1])) - (ends - c).repeat_interleave(c) + (n - c).repeat_interleave(c)
            h = hidden[rows.to(dev), cols.to(dev)]  # (sum(counts), D)
        return self.model.head(h).float()  # (sum(counts), V)
