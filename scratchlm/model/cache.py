"""Generation state: one `LayerCache` per layer, gathered in a `ModelCache`.

    cache = model.new_cache(batch=4, max_len=512)
    logits = model(prompts, cache=cache, positions=positions)   # prefill; positions -1 at left padding
    logits = model(next_ids, cache=cache)                       # decode: each row continues at its own position

Every mixer's state is a `LayerCache`: softmax attention keeps keys and values (`KVCache`, a ring
buffer for sliding-window layers), MLA its latent (`LatentCache`), linear attention and S4D a
constant-size recurrent state. Rows of a batch may hold prompts of different lengths: they are
left-padded, all rows write the same cache slots, and the positions stored with each slot (-1 for
padding and empty slots) tell attention which keys a query may see. `ModelCache` keeps the slot count
and the next position of each row.
"""

from __future__ import annotations

import torch
from torch import Tensor


class LayerCache:
    """Generation state of one layer. Subclasses hold tensors whose leading dim is the batch."""

    def nbytes(self) -> int:
        """Bytes of the tensors held."""
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, Tensor))


class ModelCache:
    """Per-layer generation state, the slots used so far (`length`, the same for every row) and the
    position of each row's next token (`next_pos` (B,))."""

    def __init__(self, layers: list[LayerCache], max_len: int, batch: int, device):
        self.layers = layers
        self.max_len = max_len
        self.length = 0
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)

    def positions(self, T: int) -> Tensor:
        """(B, T): the positions of T more tokens of every row."""
        return self.next_pos[:, None] + torch.arange(T, device=self.next_pos.device)

    def advance(self, positions: Tensor) -> None:
        """After a forward of tokens at `positions` (B|1, T): T more slots used; each row goes on after
        its last token (left padding puts every row's last token at the end)."""
        self.length += positions.shape[1]
        self.next_pos = (positions[:, -1] + 1).expand_as(self.next_pos).clone()

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self.layers)


class KVCache(LayerCache):
    """Keys and values of the tokens seen so far, with each slot's position per row.

    `window` = None keeps everything (preallocated up to `max_len`); an int keeps only the last
    `window` tokens in a ring buffer, which is all a sliding-window layer can attend to.
    """

    def __init__(self, batch: int, kv_heads: int, head_dim: int, max_len: int, window: int | None, device, dtype):
        self.size = max_len if window is None else min(window, max_len)
        self.window = window
        self.k = torch.zeros(batch, kv_heads, self.size, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((batch, self.size), -1, dtype=torch.long, device=device)  # -1 = empty or padding
        self.length = 0  # slots written

    def update(self, k: Tensor, v: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Add (B, K, T, Dh) keys/values at positions `pos` (B|1, T); return every key/value the new
        queries may need, with their positions: (B, K, S, Dh) x2, (B, S)."""
        B, T = k.shape[0], k.shape[2]
        pos = pos.expand(B, T)
        if self.window is None:
            if self.length + T > self.size:
                raise ValueError(f"KV cache full: {self.length} + {T} tokens > max_len {self.size}")
            s = slice(self.length, self.length + T)
            self.k[:, :, s], self.v[:, :, s], self.pos[:, s] = k, v, pos
            self.length += T
            return self.k[:, :, : self.length], self.v[:, :, : self.length], self.pos[:, : self.length]
        # Rolling: the new queries attend to [cached ring ; new tokens]; then the ring keeps the last `size`.
        keys = torch.cat([self.k, k], dim=2)
        values = torch.cat([self.v, v], dim=2)
        positions = torch.cat([self.pos, pos], dim=1)
        keep = min(T, self.size)
        slots = torch.arange(self.length + T - keep, self.length + T, device=pos.device) % self.size
        self.k[:, :, slots], self.v[:, :, slots] = k[:, :, -keep:], v[:, :, -keep:]
        self.pos[:, slots] = pos[:, -keep:]
        self.length += T
        return keys, values, positions


def attention_mask(q_pos: Tensor, k_pos: Tensor, window: int | None) -> Tensor:
    """(B, 1, T, S) bool, True = may attend: the key is a real token (position >= 0), not in the
    query's future, and inside the window. q_pos (B|1, T), k_pos (B|1, S).

    A padding query (position -1) may attend everywhere: its output is never read, and a row with no
    visible key would make SDPA return NaN, which would reach the cache."""
    diff = q_pos[:, :, None] - k_pos[:, None, :]  # (B, T, S)
    mask = (diff >= 0) & (k_pos[:, None, :] >= 0)
    if window is not None:
        mask &= diff < window
    mask |= (q_pos < 0)[:, :, None]
    return mask[:, None]
