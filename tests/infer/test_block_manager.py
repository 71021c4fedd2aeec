"""The block manager: counts, prefix sharing through chained hashes, LRU eviction, exhaustion, sliding-window
release, and (property test) no leaks and no overwritten shared block over random request histories."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.errors import ScratchLMError
from scratchlm.infer.block_manager import RELEASED, BlockManager, hash_block
from scratchlm.infer.sequence import Sequence, SequenceStatus


def check_invariants(bm: BlockManager, live: list[Sequence]) -> None:
    """Every block is free, evictable or in use (exactly one); refcounts equal the references in live block
    tables; the hash table and the per-block hashes agree."""
    free, evictable = set(bm._free), set(bm._evictable)
    used = {b for b in range(bm.num_blocks) if bm.ref_counts[b] > 0}
    assert len(free) == len(bm._free) and not (free & evictable) and not (free & used) and not (evictable & used)
    assert free | evictable | used == set(range(bm.num_blocks))
    refs = [0] * bm.num_blocks
    for seq in live:
        for b in seq.block_table:
            if b != RELEASED:
                refs[b] += 1
    assert refs == bm.ref_counts
    assert all(bm._hash[b] is None for b in free) and all(bm._hash[b] is not None for b in evictable)
    assert {h: b for b, h in enumerate(bm._hash) if h is not None} == bm._cached
    assert bm.num_free_blocks == bm.num_blocks - len(used)


def computed(bm: BlockManager, seq: Sequence, n: int | None = None) -> Sequence:
    """As if a step computed the keys/values of the sequence's next n tokens (all by default)."""
    seq.num_computed_tokens = len(seq) if n is None else seq.num_computed_tokens + n
    return seq


# ---------------------------------------------------------------------- sequence
def test_sequence_helpers():
    seq = Sequence([1, 2, 3, 4, 5], sampling_params="params")
    assert seq.status is SequenceStatus.WAITING and seq.num_prompt_tokens == 5 and seq.sampling_params == "params"
    assert seq.num_blocks(4) == 2 and seq.num_full_blocks(4) == 1 and seq.last_block_num_tokens(4) == 1
    assert seq.block_tokens(0, 4) == [1, 2, 3, 4] and seq.block_tokens(1, 4) == [5]
    seq.append_token(6)
    assert seq.output_token_ids == [6] and seq.prompt_token_ids == [1, 2, 3, 4, 5] and seq.last_token == 6
    assert seq.num_output_tokens == 1 and len(seq) == 6 and seq.last_block_num_tokens(3) == 3
    assert Sequence([0]).seq_id != Sequence([0]).seq_id
    a = Sequence([1])
    assert a != Sequence([1]) and a in [a]  # identity equality: queues remove this sequence, not an equal one


# ---------------------------------------------------------------------- counts
@pytest.mark.parametrize("caching", [True, False])
def test_allocation_and_free_counts(caching):
    bm = BlockManager(10, 4, enable_prefix_caching=caching)
    seq = Sequence(list(range(9)))
    assert bm.blocks_needed(seq) == 3 and bm.can_allocate(seq)
    bm.allocate(seq)
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3 and bm.num_free_blocks == 7
    assert seq.num_cached_tokens == seq.num_computed_tokens == 0
    computed(bm, seq)
    for t in range(3):  # 9 -> 12 tokens: still 3 blocks
        seq.append_token(t)
        assert bm.can_append(seq)
        bm.may_append(seq)
        computed(bm, seq)
    assert len(seq.block_table) == 3
    seq.append_token(99)  # the 13th token starts block 3
    bm.may_append(seq)
    assert len(seq.block_table) == 4 and bm.num_free_blocks == 6
    check_invariants(bm, [seq])
    bm.deallocate(seq)
    assert seq.block_table == [] and bm.num_free_blocks == 10 and bm.ref_counts == [0] * 10
    assert bm.num_cached_blocks == (3 if caching else 0)  # the 3 full computed blocks stay findable
    check_invariants(bm, [])
    with pytest.raises(ScratchLMError, match="at least|>= 1"):
        BlockManager(0, 16)


def test_allocate_twice_is_an_error():
    bm = BlockManager(4, 4)
    seq = Sequence([1, 2])
    bm.allocate(seq)
    with pytest.raises(ScratchLMError, match="already holds"):
        bm.allocate(seq)


# ---------------------------------------------------------------------- prefix sharing
def test_prefix_sharing_refcounts():
    bm = BlockManager(16, 4)
    shared = [7, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12]  # 3 full blocks
    a = Sequence(shared + [20, 21])
    bm.allocate(a)
    b_early = Sequence(shared + [30])
    bm.allocate(b_early)  # a's blocks are not computed yet: nothing to share
    assert b_early.num_cached_tokens == 0 and not set(a.block_table) & set(b_early.block_table)
    bm.deallocate(b_early)

    bm.may_append(computed(bm, a))  # a's prefill ran: its 3 full blocks are registered
    b = Sequence(shared + [30, 31, 32])
    assert bm.can_allocate(b)
    free = bm.num_free_blocks
    bm.allocate(b)
    assert b.block_table[:3] == a.block_table[:3] and b.block_table[3] != a.block_table[3]
    assert [bm.ref_counts[x] for x in a.block_table] == [2, 2, 2, 1]
    assert b.num_cached_tokens == b.num_computed_tokens == 12 and bm.num_free_blocks == free - 1
    check_invariants(bm, [a, b])
    bm.deallocate(a)
    assert [bm.ref_counts[x] for x in b.block_table] == [1, 1, 1, 1]
    bm.deallocate(b)
    assert bm.num_free_blocks == 16
    check_invariants(bm, [])
    assert bm.hit_tokens == 12 and bm.queried_tokens == len(a) + len(b_early) + len(b)


def test_duplicate_prompt_recomputes_its_last_token_in_its_own_block():
    """A block-aligned prompt seen before hits every block but the last: the last token's logits start
    generation, so it is computed again, and written to a block of the new sequence's own."""
    bm = BlockManager(8, 4)
    prompt = list(range(12))
    samples = [Sequence(prompt) for _ in range(3)]  # n = 3 samples of one prompt
    bm.allocate(samples[0])
    bm.may_append(computed(bm, samples[0]))
    for s in samples[1:]:
        bm.allocate(s)
        assert s.num_cached_tokens == 8 and s.block_table[:2] == samples[0].block_table[:2]
        assert s.block_table[2] not in samples[0].block_table
    assert [bm.ref_counts[b] for b in samples[0].block_table] == [3, 3, 1]
    check_invariants(bm, samples)
    for s in samples:
        bm.deallocate(s)
    assert bm.num_free_blocks == 8 and bm.num_cached_blocks == 3
    check_invariants(bm, [])


def test_hash_chaining_same_block_elsewhere_does_not_hit():
    bm = BlockManager(16, 4)
    x, y = [1, 2, 3, 4], [5, 6, 7, 8]
    assert hash_block(b"", x) != hash_block(hash_block(b"", y), x)  # the position (parent) is in the hash
    assert hash_block(b"", x) == hash_block(b"", list(x))  # stable: a function of the token ids only
    a = Sequence(x + y + [0])
    bm.allocate(a)
    bm.deallocate(computed(bm, a))
    swapped = Sequence(y + x + [0])  # both blocks cached, at the other positions
    bm.allocate(swapped)
    assert swapped.num_cached_tokens == 0 and not set(swapped.block_table) & set(a.block_table[:2])
    other_prefix = Sequence([9, 9, 9, 9] + y + [0])  # block 1 equal to a's block 1, after another block 0
    bm.allocate(other_prefix)
    assert other_prefix.num_cached_tokens == 0
    check_invariants(bm, [swapped, other_prefix])


def test_a_hash_collision_is_caught_by_the_token_check():
    bm = BlockManager(8, 4)
    a = Sequence([1, 2, 3, 4, 0])
    bm.allocate(a)
    bm.deallocate(computed(bm, a))
    block = bm._cached[hash_block(b"", [1, 2, 3, 4])]
    forged = hash_block(b"", [4, 3, 2, 1])
    bm._cached[forged] = block  # as if [4, 3, 2, 1] had the same hash
    b = Sequence([4, 3, 2, 1, 0])
    bm.allocate(b)
    assert b.num_cached_tokens == 0 and block not in b.block_table


def test_prefix_caching_off_never_shares():
    bm = BlockManager(8, 4, enable_prefix_caching=False)
    a, b = Sequence(list(range(9))), Sequence(list(range(9)))
    bm.allocate(a)
    bm.may_append(computed(bm, a))
    bm.allocate(b)
    assert b.num_cached_tokens == 0 and not set(a.block_table) & set(b.block_table) and bm.num_cached_blocks == 0


# ---------------------------------------------------------------------- eviction
def test_lru_eviction_order():
    bm = BlockManager(6, 2)
    a, b, c = (Sequence([t, t, 0]) for t in (1, 2, 3))  # one full block + one partial block each
    for s in (a, b, c):
        bm.allocate(s)
        computed(bm, s)
    for s in (a, b, c):
        bm.deallocate(s)  # cached, evictable in the order a0, b0, c0; the partial blocks are plain free
    a0, b0, c0 = (bm._cached[hash_block(b"", [t, t])] for t in (1, 2, 3))  # (the tables were cleared)
    assert list(bm._evictable) == [a0, b0, c0] and bm.num_free_blocks == 6
    b2 = Sequence([2, 2, 5])  # a hit makes b0 the most recently used
    bm.allocate(b2)
    assert b2.block_table[0] == b0
    bm.deallocate(b2)
    assert list(bm._evictable) == [a0, c0, b0]
    d = Sequence([9] * 7)  # 4 blocks: the 3 free ones first, then the least recently used: a0
    bm.allocate(d)
    assert a0 in d.block_table and {c0, b0}.isdisjoint(d.block_table)
    e = Sequence([3, 3, 4])  # c0 survived
    bm.allocate(e)
    assert e.num_cached_tokens == 2 and e.block_table[0] == c0
    miss = Sequence([1, 1, 4])  # a0 was evicted: its hash is gone
    assert not bm.can_allocate(miss)  # 2 blocks needed, only b0 left
    check_invariants(bm, [d, e])


def test_a_sequences_tail_blocks_are_evicted_before_its_prefix():
    bm = BlockManager(4, 2)
    s = Sequence([1, 2, 3, 4, 5, 6, 7])
    bm.allocate(s)
    table = list(s.block_table)
    bm.deallocate(computed(bm, s))
    assert list(bm._evictable) == [table[2], table[1], table[0]]


# ---------------------------------------------------------------------- exhaustion
def test_exhaustion_is_all_or_nothing():
    bm = BlockManager(4, 4)
    big = Sequence(list(range(17)))  # 5 blocks
    assert not bm.can_allocate(big)
    with pytest.raises(ScratchLMError, match="needs 5 new KV blocks, 4 are free"):
        bm.allocate(big)
    assert big.block_table == [] and bm.num_free_blocks == 4 and bm.ref_counts == [0] * 4
    a = Sequence(list(range(12)))
    bm.allocate(a)
    assert not bm.can_allocate(Sequence(list(range(100, 108))))  # 2 blocks, 1 free
    bm.may_append(computed(bm, a))
    for t in range(4):  # 16 tokens: the last free block
        a.append_token(t)
        bm.may_append(computed(bm, a))
    a.append_token(0)
    assert not bm.can_append(a)
    with pytest.raises(ScratchLMError, match="needs 1 new KV blocks, 0 are free"):
        bm.may_append(a)
    assert len(a.block_table) == 4
    check_invariants(bm, [a])


def test_can_allocate_counts_evictable_hits_once():
    """An evictable block that is a prefix hit is not also available as a fresh block, and allocation pins
    the hits before taking fresh blocks (so it never evicts its own hit)."""
    bm = BlockManager(3, 2)
    a = Sequence([1, 2, 3, 4, 5])
    bm.allocate(a)
    hits = a.block_table[:2]
    bm.deallocate(computed(bm, a))  # 2 evictable (hashed), 1 free
    too_big = Sequence([1, 2, 3, 4, 9, 9, 9])  # 4 blocks: 2 hits + 2 new, 1 available
    assert not bm.can_allocate(too_big)
    fits = Sequence([1, 2, 3, 4, 6])  # 3 blocks: 2 hits + 1 new
    assert bm.can_allocate(fits)
    bm.allocate(fits)
    assert fits.block_table[:2] == hits and fits.num_cached_tokens == 4 and bm.num_free_blocks == 0
    check_invariants(bm, [fits])


# ---------------------------------------------------------------------- sliding window
@pytest.mark.parametrize("caching", [True, False])
def test_sliding_window_release(caching):
    bm = BlockManager(8, 4, enable_prefix_caching=caching)
    seq = Sequence(list(range(20)))  # 5 blocks
    bm.allocate(seq)
    table = list(seq.block_table)
    assert bm.release_outside_window(seq, 6) == []  # nothing computed: everything may still be seen
    computed(bm, seq)  # next query at position 20 sees 15..20: blocks 0-2 (positions 0..11) are out
    assert bm.release_outside_window(seq, 6) == table[:3]
    assert seq.block_table == [RELEASED] * 3 + table[3:] and bm.num_free_blocks == 6
    assert all(bm.ref_counts[b] == 0 for b in table[:3])
    assert bm.release_outside_window(seq, 6) == []  # idempotent
    check_invariants(bm, [seq])
    for t in range(4):  # 24 tokens, next query at 24 sees 19..24: block 3 (12..15) goes, 4 (16..19) stays
        seq.append_token(t)
        bm.may_append(computed(bm, seq))
        bm.release_outside_window(seq, 6)
    assert seq.block_table[:4] == [RELEASED] * 4 and seq.block_table[4] == table[4] and len(seq.block_table) == 6
    check_invariants(bm, [seq])
    other = Sequence(list(range(13)))  # the released full blocks keep their hashes: still a prefix hit
    bm.allocate(other)
    assert other.num_cached_tokens == (12 if caching else 0)
    bm.deallocate(seq)
    bm.deallocate(other)
    assert bm.num_free_blocks == 8 and bm.ref_counts == [0] * 8
    check_invariants(bm, [])
    with pytest.raises(ScratchLMError, match="window"):
        bm.release_outside_window(seq, 0)


def test_window_one_keeps_only_the_next_query():
    bm = BlockManager(4, 2)
    seq = Sequence([1, 2, 3, 4, 5])
    bm.allocate(seq)
    computed(bm, seq, 4)  # next query at position 4 sees only itself: blocks 0, 1 go, block 2 stays
    assert len(bm.release_outside_window(seq, 1)) == 2 and seq.block_table[2] != RELEASED


# ---------------------------------------------------------------------- random histories
class Simulation:
    """A fake model that writes, for each computed token, the identity of its whole prefix into the slot the
    block table gives it; a sequence then checks that every computed slot it can see holds its own prefix.
    Writing into a block that another sequence shares, or that the prefix cache serves, is an error."""

    def __init__(self, bm: BlockManager):
        self.bm, self.slots = bm, {}

    def compute(self, seq: Sequence, n: int) -> None:
        bs = self.bm.block_size
        for p in range(seq.num_computed_tokens, seq.num_computed_tokens + n):
            b = seq.block_table[p // bs]
            assert b != RELEASED and self.bm.ref_counts[b] == 1 and self.bm._hash[b] is None, "wrote a shared block"
            self.slots[b, p % bs] = tuple(seq.token_ids[: p + 1])
        seq.num_computed_tokens += n

    def check(self, seq: Sequence) -> None:
        bs = self.bm.block_size
        for p in range(seq.num_computed_tokens):
            b = seq.block_table[p // bs]
            if b != RELEASED:
                assert self.slots[b, p % bs] == tuple(seq.token_ids[: p + 1]), f"wrong cached KV at position {p}"


def run_history(bm: BlockManager, window: int, ops) -> dict:
    """Drive the manager as a scheduler would. ops: (kind, r) pairs: kind 0-1 admits a new (or, for 1, a
    preempted) sequence, 2-4 runs one step of a running sequence (a prefill chunk, or sample a token and get
    its block, preempting when there is none; then the window release), 5 finishes one. After every op: the
    invariants hold and every running sequence sees its own keys/values. At the end: no leak."""
    sim, events = Simulation(bm), dict.fromkeys(("hits", "evictions", "releases", "preemptions", "refused"), 0)
    prefixes = [[1, 2, 1, 2, 3, 1, 2, 1, 2, 3, 4, 4], [1, 2, 3, 3, 3, 1, 2, 1, 2], [3] * 12]
    running: list[Sequence] = []
    waiting: list[Sequence] = []  # preempted: recomputed from scratch later, with their outputs
    for kind, r in ops:
        rng = random.Random(r)
        if kind <= 1 or not running:  # admit
            if waiting and kind == 1:
                seq = waiting[0]
            else:
                seq = Sequence(rng.choice(prefixes)[: rng.randint(1, 12)] + [rng.randint(0, 4)] * rng.randint(0, 3))
            before = (list(bm.ref_counts), bm.num_free_blocks)
            if bm.can_allocate(seq):
                evictable = len(bm._evictable)
                bm.allocate(seq)
                assert seq.num_cached_tokens % bm.block_size == 0 and seq.num_cached_tokens < len(seq)
                events["hits"] += seq.num_cached_tokens > 0
                events["evictions"] += len(bm._evictable) < evictable - seq.num_cached_tokens // bm.block_size
                running.append(seq)
                if seq in waiting:
                    waiting.remove(seq)
            else:
                events["refused"] += 1
                with pytest.raises(ScratchLMError):
                    bm.allocate(seq)
                assert (bm.ref_counts, bm.num_free_blocks) == before and seq.block_table == []
        elif kind <= 4:
            seq = running[r % len(running)]
            if seq.num_computed_tokens < len(seq):  # a prefill chunk or a decode step
                sim.compute(seq, rng.randint(1, len(seq) - seq.num_computed_tokens))
                if window:
                    events["releases"] += len(bm.release_outside_window(seq, window))
            else:  # sample a token, get a block for it
                seq.append_token(rng.randint(0, 4))
                if bm.can_append(seq):
                    bm.may_append(seq)
                else:  # preempt it
                    events["preemptions"] += 1
                    bm.deallocate(seq)
                    seq.num_computed_tokens = 0
                    running.remove(seq)
                    waiting.append(seq)
        else:  # finish or abort
            bm.deallocate(running.pop(r % len(running)))
        for seq in running:
            sim.check(seq)
        check_invariants(bm, running)
    for seq in running:
        bm.deallocate(seq)
    check_invariants(bm, [])
    assert bm.num_free_blocks == bm.num_blocks and bm.ref_counts == [0] * bm.num_blocks
    return events


@settings(max_examples=200, deadline=None)
@given(
    num_blocks=st.integers(1, 16),
    block_size=st.sampled_from([1, 2, 3, 4]),
    caching=st.booleans(),
    window=st.sampled_from([0, 1, 3, 7]),
    ops=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2**16)), max_size=100),
)
def test_random_histories_leak_nothing_and_never_corrupt_shared_blocks(num_blocks, block_size, caching, window, ops):
    run_history(BlockManager(num_blocks, block_size, caching), window, ops)


def test_long_random_histories_reach_every_event():
    """Longer seeded histories than hypothesis draws, checked to reach prefix hits, evictions, window
    releases, preemptions and refusals (so the property test above is not vacuous)."""
    total = dict.fromkeys(("hits", "evictions", "releases", "preemptions", "refused"), 0)
    for seed in range(12):
        rng = random.Random(seed)
        ops = [(rng.choice([0, 0, 1, 2, 2, 2, 3, 3, 3, 4, 4, 5]), rng.randrange(2**16)) for _ in range(300)]
        bm = BlockManager(rng.randint(4, 12), rng.choice([1, 2, 4]), enable_prefix_caching=seed % 4 != 3)
        for k, v in run_history(bm, [0, 3, 7][seed % 3], ops).items():
            total[k] += v
    assert all(v > 0 for v in total.values()), total
