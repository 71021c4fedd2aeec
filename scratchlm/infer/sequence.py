"""One request's state in the engine: its tokens (prompt + output so far), status, KV blocks and progress.

    seq = Sequence([1, 2, 3, 4, 5], params)       # WAITING, no blocks yet
    seq.num_blocks(block_size=4)                  # 2: blocks needed to hold its 5 tokens
    seq.block_tokens(1, 4)                        # [5]: the tokens of its block 1
    seq.append_token(6)                           # a sampled token joins token_ids

Counters, in tokens: `num_cached_tokens` were found in the prefix cache when the blocks were allocated
(never computed again), `num_computed_tokens` have their keys/values in the cache (cached + computed by
past steps; chunked prefill advances it a chunk at a time). The block manager owns `block_table`,
`block_hashes` and `num_registered_blocks`; the scheduler owns `status` and `num_computed_tokens`.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()  # queued: no blocks (new, or preempted and to be recomputed)
    RUNNING = enum.auto()  # holds blocks, scheduled every step
    FINISHED = enum.auto()  # done (finish_reason says why), blocks released


@dataclass(eq=False)  # identity equality: queues find and remove *this* sequence
class Sequence:
    token_ids: list[int]  # prompt + output so far
    sampling_params: Any = None  # scratchlm.infer.sampling.SamplingParams (typed loosely: no import cycle)
    seq_id: int = field(default_factory=lambda: next(_ids))  # unique in the process
    num_prompt_tokens: int = -1  # -1: len(token_ids) at construction
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)  # physical KV block of each logical block; -1 = released
    num_cached_tokens: int = 0  # served from the prefix cache at allocation
    # prompt tokens the first allocation found in the prefix cache (-1: not allocated yet); kept after the
    # sequence finishes or is preempted, for usage reports
    num_prompt_cached_tokens: int = -1
    num_computed_tokens: int = 0  # tokens whose keys/values are in the cache
    finish_reason: str | None = None  # "stop" | "length" | "abort" once FINISHED
    # Block manager bookkeeping: the chained hash of each full block computed so far (a function of the
    # tokens only, memoised), and how many leading blocks of block_table are registered in the prefix cache.
    block_hashes: list[bytes] = field(default_factory=list)
    num_registered_blocks: int = 0

    def __post_init__(self):
        self.token_ids = list(self.token_ids)
        if self.num_prompt_tokens < 0:
            self.num_prompt_tokens = len(self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def last_token(self) -> int:
        return self.token_ids[-1]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(int(token_id))

    def num_blocks(self, block_size: int) -> int:
        """Blocks needed to hold all len(self) tokens."""
        return -(-len(self.token_ids) // block_size)

    def num_full_blocks(self, block_size: int) -> int:
        return len(self.token_ids) // block_size

    def block_tokens(self, i: int, block_size: int) -> list[int]:
        """The token ids in logical block i (block_size of them, fewer in a partial last block)."""
        return self.token_ids[i * block_size : (i + 1) * block_size]

    def last_block_num_tokens(self, block_size: int) -> int:
        """Tokens in the last block: 1..block_size (0 for an empty sequence)."""
        return len(self.token_ids) - (self.num_blocks(block_size) - 1) * block_size if self.token_ids else 0
