"""The paged KV cache's bookkeeping: which physical block holds each sequence's tokens, and the prefix cache.

    blocks = BlockManager(num_blocks=256, block_size=16)
    if blocks.can_allocate(seq):
        blocks.allocate(seq)          # seq.block_table covers all its tokens; seq.num_cached_tokens hit the cache
    blocks.may_append(seq)            # before each step: a new block when the sequence crossed a block boundary
    blocks.deallocate(seq)            # finished or preempted: refcounts drop, full blocks stay cached

Every block is in exactly one state: free (refcount 0, no hash), cached-evictable (refcount 0, a hash:
its keys/values can still serve a prefix hit) or in use (refcount >= 1; several sequences share a block
through its refcount: duplicate prompts, n > 1 samples of one prompt, a common system prompt).
`num_free_blocks` counts free + evictable: a fresh block is taken from the free list first, else the
least recently used evictable block is evicted (its hash forgotten).

Prefix caching (vLLM's automatic prefix caching, nano-vllm's chained hashes): a full block is named by
hash(hash of the block before it, its token ids), so equal content at a different position or after a
different prefix does not match. The hash is blake2b-128 over little-endian int64 token ids (stable
across processes, unlike Python's salted `hash`), and a hit also compares (parent hash, token ids), so
a collision of the final hash cannot serve wrong keys/values. Two rules keep shared blocks read-only:
- a block is registered (becomes findable) only once it is full *and computed*: its tokens lie within
  seq.num_computed_tokens. A block allocated for a prompt chunk not yet run is not served to others.
- a hit never covers a sequence's last token: the step that starts a sequence must compute at least
  that token (its logits start generation), and it writes into a block of its own (vLLM does the same).
Registration happens in `may_append`, `deallocate` and `release_outside_window` (and `cache_full_blocks`,
which the engine may call after each step to share blocks sooner).

Sliding windows: `release_outside_window(seq, window)` gives back the blocks no future query can see.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict, deque

from scratchlm.errors import ScratchLMError
from scratchlm.infer.sequence import Sequence

RELEASED = -1  # block_table placeholder of a block released by a sliding window


def hash_block(parent: bytes, token_ids: list[int]) -> bytes:
    """Chained hash of a full block: blake2b-128 of the parent's hash (b"" for block 0) and the token ids."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ScratchLMError(
                f"BlockManager needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}"
            )
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks  # registered hash of each block
        self._key: list[tuple | None] = [None] * num_blocks  # (parent hash, token ids) checked on a hit
        self._cached: dict[bytes, int] = {}  # hash -> block
        self._free: deque[int] = deque(range(num_blocks))  # refcount 0, no hash
        self._evictable: OrderedDict[int, None] = OrderedDict()  # refcount 0, hashed; least recently used first
        self.hit_tokens = self.queried_tokens = 0  # prefix-cache statistics over all allocations

    # ------------------------------------------------------------------ counts
    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now: free + cached-evictable."""
        return len(self._free) + len(self._evictable)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks findable by hash (in use or evictable)."""
        return len(self._cached)

    def blocks_needed(self, seq: Sequence) -> int:
        return seq.num_blocks(self.block_size)

    # ------------------------------------------------------------------ prefix cache
    def _block_hash(self, seq: Sequence, i: int) -> bytes:
        """Hash of the sequence's full block i (memoised in seq.block_hashes: token ids only ever grow)."""
        while len(seq.block_hashes) <= i:
            j = len(seq.block_hashes)
            parent = seq.block_hashes[j - 1] if j else b""
            seq.block_hashes.append(hash_block(parent, seq.block_tokens(j, self.block_size)))
        return seq.block_hashes[i]

    def _block_key(self, seq: Sequence, i: int) -> tuple:
        return (seq.block_hashes[i - 1] if i else b"", tuple(seq.block_tokens(i, self.block_size)))

    def _prefix_hits(self, seq: Sequence) -> list[int]:
        """Physical blocks holding the sequence's leading full blocks, excluding any block with its last token."""
        hits: list[int] = []
        if not self.enable_prefix_caching:
            return hits
        for i in range((len(seq) - 1) // self.block_size):
            b = self._cached.get(self._block_hash(seq, i))
            if b is None or self._key[b] != self._block_key(seq, i):
                break
            hits.append(b)
        return hits

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the sequence's blocks that are full and computed (within seq.num_computed_tokens)."""
        if not self.enable_prefix_caching:
            return
        n = min(min(seq.num_computed_tokens, len(seq)) // self.block_size, len(seq.block_table))
        for i in range(seq.num_registered_blocks, n):
            h, b = self._block_hash(seq, i), seq.block_table[i]
            # Another sequence may have computed the same block first: its copy stays the cached one and
            # this block is freed, not cached, when released.
            if b != RELEASED and self._hash[b] is None and h not in self._cached:
                self._hash[b], self._key[b], self._cached[h] = h, self._block_key(seq, i), b
        seq.num_registered_blocks = max(seq.num_registered_blocks, n)

    def reset_prefix_cache(self) -> int:
        """Forget every cached block (their KV came from weights that have since changed: RL rollouts after an
        optimizer step). Only when no block is in use; returns the number of blocks forgotten."""
        if any(self.ref_counts):
            raise ScratchLMError("reset_prefix_cache with blocks in use: finish or abort the running requests first")
        n = len(self._cached)
        for b in self._evictable:
            self._hash[b] = self._key[b] = None
            self._free.append(b)
        self._evictable.clear()
        self._cached.clear()
        return n

    # ------------------------------------------------------------------ block states
    def _take(self) -> int:
        """A block for new tokens (refcount 1): a free one, else the least recently used evictable one."""
        if self._free:
            b = self._free.popleft()
        else:
            b, _ = self._evictable.popitem(last=False)
            del self._cached[self._hash[b]]
            self._hash[b] = self._key[b] = None
        self.ref_counts[b] = 1
        return b

    def _share(self, b: int) -> None:
        if self.ref_counts[b] == 0:
            del self._evictable[b]
        self.ref_counts[b] += 1

    def _release(self, b: int) -> None:
        self.ref_counts[b] -= 1
        if self.ref_counts[b] == 0:
            if self._hash[b] is not None:
                self._evictable[b] = None  # most recently used end
            else:
                self._free.append(b)

    def _available(self, hits: list[int]) -> int:
        """Blocks free for new tokens once `hits` are taken (an evictable hit is no longer evictable)."""
        return self.num_free_blocks - sum(self.ref_counts[b] == 0 for b in hits)

    # ------------------------------------------------------------------ sequences
    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._prefix_hits(seq)
        return seq.num_blocks(self.block_size) - len(hits) <= self._available(hits)

    def allocate(self, seq: Sequence) -> None:
        """Blocks for all of the sequence's tokens, reusing cached full blocks of its prefix; sets
        seq.num_cached_tokens (a multiple of block_size, < len(seq)) and seq.num_computed_tokens to it.
        All or nothing: raises ScratchLMError, changing nothing, when the blocks are not there."""
        if seq.block_table:
            raise ScratchLMError(f"sequence {seq.seq_id} already holds {len(seq.block_table)} KV blocks")
        hits = self._prefix_hits(seq)
        need = seq.num_blocks(self.block_size) - len(hits)
        available = self._available(hits)
        if need > available:
            raise ScratchLMError(f"sequence {seq.seq_id} needs {need} new KV blocks, {available} are free")
        for b in hits:
            self._share(b)
        seq.block_table = hits + [self._take() for _ in range(need)]
        seq.num_cached_tokens = seq.num_computed_tokens = len(hits) * self.block_size
        seq.num_registered_blocks = len(hits)
        if seq.num_prompt_cached_tokens < 0:
            seq.num_prompt_cached_tokens = min(seq.num_cached_tokens, seq.num_prompt_tokens)
        self.hit_tokens += seq.num_cached_tokens
        self.queried_tokens += len(seq)

    def can_append(self, seq: Sequence) -> bool:
        return seq.num_blocks(self.block_size) - len(seq.block_table) <= self.num_free_blocks

    def may_append(self, seq: Sequence) -> None:
        """Before a step: register blocks that became full and computed, and add blocks so the table covers
        all len(seq) tokens (one new block when the last appended token crossed a block boundary)."""
        self.cache_full_blocks(seq)
        need = seq.num_blocks(self.block_size) - len(seq.block_table)
        if need > self.num_free_blocks:
            raise ScratchLMError(f"sequence {seq.seq_id} needs {need} new KV blocks, {self.num_free_blocks} are free")
        seq.block_table.extend(self._take() for _ in range(need))

    def truncate(self, seq: Sequence) -> None:
        """Release the blocks past what the sequence's tokens need (speculative proposals that were dropped
        or rejected). Such blocks were never full of computed tokens, so none is in the prefix cache."""
        keep = seq.num_blocks(self.block_size)
        for b in reversed(seq.block_table[keep:]):
            if b != RELEASED:
                self._release(b)
        del seq.block_table[keep:]

    def deallocate(self, seq: Sequence) -> None:
        """Drop the sequence's references (finished, aborted or preempted). Its full computed blocks are
        registered first, so they stay cached until evicted. Tail blocks are released first and so are
        evicted before the prefix blocks of the same sequence (which more requests are likely to share).
        seq.num_computed_tokens is left to the caller (the scheduler resets it on preemption)."""
        self.cache_full_blocks(seq)
        for b in reversed(seq.block_table):
            if b != RELEASED:
                self._release(b)
        seq.block_table = []
        seq.num_cached_tokens = seq.num_registered_blocks = 0

    def release_outside_window(self, seq: Sequence, window: int) -> list[int]:
        """Release the sequence's blocks that no future query can see under a sliding window; return them.

        Contract: a query at position p sees positions p - window + 1 .. p, and every future query of the
        sequence is at a position >= seq.num_computed_tokens (call this after the step's
        num_computed_tokens update). A block is released when all its positions are < num_computed_tokens
        - window + 1. Its block_table entry becomes RELEASED (-1), so logical block i still holds positions
        i * block_size ..; attention must not read it (the paged kernels start at the window; a gather
        reads some block there and the window mask hides it). The pool is shared by all layers: pass the
        largest window of the model, and never call this for a model with a full-attention layer. A
        released full block keeps its hash (it can still serve the same prefix to another request) until
        evicted. Idempotent; deallocate skips RELEASED entries."""
        if window < 1:
            raise ScratchLMError(f"release_outside_window: window must be >= 1, got {window}")
        self.cache_full_blocks(seq)
        first_visible = max(0, seq.num_computed_tokens - window + 1)
        n = min(first_visible // self.block_size, len(seq.block_table))
        released = []
        i = n - 1  # the released blocks are a prefix of the table: walk back to the last one released before
        while i >= 0 and seq.block_table[i] != RELEASED:
            released.append(seq.block_table[i])
            self._release(seq.block_table[i])
            seq.block_table[i] = RELEASED
            i -= 1
        return released[::-1]
