"""Continuous batching: which sequences run in the next step, and how many of their tokens.

Each step takes at most `max_num_seqs` sequences and `max_num_batched_tokens` tokens, first come
first served:
1. Running sequences first, in arrival order: a decoding sequence feeds its one new token; one
   still in its prompt feeds the next chunk that fits the token budget (chunked prefill). A sequence
   whose next token needs a block that is not free preempts the newest running sequence (its blocks
   are freed and it goes back to the front of the waiting queue, to be recomputed later), or itself
   when it is the newest.
2. Then waiting sequences, while their blocks (the whole prompt, minus prefix-cache hits, which are
   never computed again) can be allocated: the first chunk of their prompt. A model with recurrent layers
   also gives each running sequence a state slot (`state_slots.py`), freed with its blocks.
A sequence needs logits only when a step feeds its last known token; `Step.samples` says which.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from scratchlm.errors import ScratchLMError
from scratchlm.infer.sequence import Sequence, SequenceStatus


@dataclass
class Step:
    batch: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, tokens fed this step)
    preempted: list[Sequence] = field(default_factory=list)

    def samples(self, i: int) -> bool:
        seq, n = self.batch[i]
        return seq.num_computed_tokens + n == len(seq.token_ids)


class Scheduler:
    def __init__(self, block_manager, max_num_seqs: int, max_num_batched_tokens: int, state_slots=None):
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ScratchLMError("max_num_seqs and max_num_batched_tokens must be >= 1")
        self.blocks = block_manager
        self.slots = state_slots  # recurrent layers' state slots (state_slots.StateSlots, max_num_seqs of them) or None
        self.max_num_seqs, self.max_tokens = max_num_seqs, max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.on_preempt = None  # called with a sequence before it is preempted (the engine drops its proposals)

    def add(self, seq: Sequence) -> None:
        need = self.blocks.blocks_needed(seq)
        if need > self.blocks.num_blocks:
            raise ScratchLMError(
                f"request {seq.seq_id} needs {need} KV blocks, more than the pool's {self.blocks.num_blocks}"
            )
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, seq: Sequence) -> None:
        if self.on_preempt is not None:
            self.on_preempt(seq)
        self.blocks.deallocate(seq)
        if self.slots is not None:  # recomputed from token 0 in a fresh slot
            self.slots.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_computed_tokens = 0
        self.waiting.appendleft(seq)

    def schedule(self) -> Step:
        step, budget = Step(), self.max_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            while not self.blocks.can_append(seq):  # its newest token needs a block: free the newest running
                victim = self.running.pop()
                self._preempt(victim)
                step.preempted.append(victim)
                if victim is seq:
                    break
            else:
                self.blocks.may_append(seq)
                n = min(len(seq.token_ids) - seq.num_computed_tokens, budget)
                step.batch.append((seq, n))
                budget -= n
                i += 1
                continue
            break  # seq preempted itself: it was the newest, nothing after it is running
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.blocks.can_allocate(seq):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq)  # sets seq.num_cached_tokens from the prefix cache
            if self.slots is not None:  # a slot is free: running sequences hold them, and there are < max_num_seqs
                self.slots.allocate(seq)
            # at least the last token is computed: its logits start the generation
            seq.num_computed_tokens = min(seq.num_cached_tokens, len(seq.token_ids) - 1)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            n = min(len(seq.token_ids) - seq.num_computed_tokens, budget)
            step.batch.append((seq, n))
            budget -= n
        return step

    def finish(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.deallocate(seq)
        if self.slots is not None:
            self.slots.free(seq)
