"""Byte-level BPE training (GPT-2 style), streamed and parallel.

    vocab, merges = train_bpe("corpus.txt", vocab_size=10_000, special_tokens=["<|endoftext|>"])

1. The corpus is read in chunks cut after special tokens (see `chunks.py`); worker processes
   split each chunk on the special tokens, run the GPT-2 regex and count pre-tokens. Only the
   table of distinct pre-tokens is kept, so memory follows the vocabulary of the corpus, not its
   size.
2. The merge loop (`merge_loop.py`) runs over those counts with incremental pair updates.

The initial vocabulary is the 256 byte values (ids 0..255) then the special tokens; merged
tokens follow in merge order. Same input and settings give the same vocab and merges, whatever
the number of workers or the chunk size.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Iterable
from concurrent.futures import Future
from functools import lru_cache
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.io import check_input_file
from scratchlm.progress import progress_bar
from scratchlm.tokenizer.chunks import ChunkStats, decode_utf8, iter_byte_chunks, work_chunk_bytes
from scratchlm.tokenizer.merge_loop import merge_loop
from scratchlm.tokenizer.pretokenize import (
    GPT2_PATTERN,
    check_special_tokens,
    findall_function,
    special_splitter,
    split_special,
)
from scratchlm.workers import resolve_workers, worker_pool

Vocab = dict[int, bytes]
Merges = list[tuple[bytes, bytes]]


@lru_cache(maxsize=4)
def _compiled(pattern: str, specials: tuple[str, ...]):
    return findall_function(pattern), special_splitter(specials)


def count_chunk(data: bytes, specials: tuple[str, ...], pattern: str = GPT2_PATTERN) -> tuple[Counter[str], int]:
    """Pre-token frequencies of one chunk, and its count of invalid UTF-8 bytes (runs in a worker)."""
    text, invalid = decode_utf8(data)
    findall, splitter = _compiled(pattern, specials)
    counts: Counter[str] = Counter()
    for piece, is_special in split_special(text, splitter):
        if not is_special:
            counts.update(findall(piece))
    return counts, invalid


def count_pretokens_in_file(
    path: str | Path,
    special_tokens: Iterable[str] = (),
    num_workers: int | None = None,
    chunk_bytes: int = 1 << 20,
    pattern: str = GPT2_PATTERN,
    progress: bool = False,
) -> Counter[str]:
    """Pre-token frequencies of a whole file, streamed in chunks over `num_workers` processes."""
    path = check_input_file(path, "corpus file")
    specials = tuple(special_tokens)
    workers = resolve_workers(num_workers, "num_workers")
    stats = ChunkStats()
    chunk_bytes = work_chunk_bytes(path.stat().st_size, workers, chunk_bytes)
    chunks = iter_byte_chunks(path, specials, chunk_bytes, stats)
    _compiled(pattern, specials)  # build tables once, before forking: the workers inherit them
    total: Counter[str] = Counter()

    def add(result: tuple[Counter[str], int]) -> None:
        total.update(result[0])
        stats.invalid_utf8 += result[1]

    with progress_bar(progress, total=path.stat().st_size, desc="pre-tokenize", unit="B", unit_scale=True) as bar:

        def advance() -> None:
            bar.update(stats.bytes_read - bar.n)

        if workers == 1:
            for data in chunks:
                add(count_chunk(data, specials, pattern))
                advance()
        else:
            # A bounded number of chunks in flight keeps memory flat however large the file.
            with worker_pool(workers) as pool:
                inflight: deque[Future] = deque()
                for data in chunks:
                    inflight.append(pool.submit(count_chunk, data, specials, pattern))
                    if len(inflight) >= 2 * workers:
                        add(inflight.popleft().result())
                    advance()
                while inflight:
                    add(inflight.popleft().result())
        advance()
    if stats.invalid_utf8:
        import logging

        logging.getLogger(__name__).warning(
            "%s: %d bytes are not valid UTF-8; they were replaced by U+FFFD", path, stats.invalid_utf8
        )
    return total


def train_bpe_from_counts(
    counts: dict[str, int] | dict[bytes, int],
    vocab_size: int,
    special_tokens: Iterable[str] = (),
    progress: bool = False,
    backend: str = "auto",
) -> tuple[Vocab, Merges]:
    """BPE on a table of pre-token frequencies (str pre-tokens are UTF-8 encoded)."""
    specials = check_special_tokens(special_tokens)
    n_base = 256 + len(specials)
    if vocab_size < n_base:
        raise ScratchLMError(
            f"vocab_size {vocab_size} is smaller than the 256 byte tokens + {len(specials)} special tokens ({n_base})"
        )
    token_bytes = [bytes([i]) for i in range(256)] + [s.encode("utf-8") for s in specials]
    words = [w.encode("utf-8") if isinstance(w, str) else w for w in counts]
    freqs = list(counts.values())
    num_merges = vocab_size - n_base
    with progress_bar(progress, total=num_merges, desc="merges", unit="merge") as bar:
        pairs = merge_loop(words, freqs, token_bytes, num_merges, lambda n: bar.update(n - bar.n), backend)
    merges: Merges = []
    for a, b in pairs:
        merges.append((token_bytes[a], token_bytes[b]))
        token_bytes.append(token_bytes[a] + token_bytes[b])
    if len(merges) < num_merges:
        import logging

        logging.getLogger(__name__).warning(
            "corpus too small: only %d merges possible, vocab size is %d instead of %d",
            len(merges),
            len(token_bytes),
            vocab_size,
        )
    return dict(enumerate(token_bytes)), merges


def train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: Iterable[str] = ("<|endoftext|>",),
    *,
    num_workers: int | None = None,
    chunk_bytes: int = 1 << 20,
    pattern: str = GPT2_PATTERN,
    progress: bool = False,
    backend: str = "auto",
) -> tuple[Vocab, Merges]:
    """Train byte-level BPE on a text file. Returns (vocab id -> bytes, merges in order).

    `num_workers` pre-tokenizing processes (default: all cores); `chunk_bytes` bounds the text a
    worker holds at once; `backend` picks the merge loop ("auto": compiled if built, else Python).
    """
    specials = check_special_tokens(special_tokens)
    if vocab_size < 256 + len(specials):
        raise ScratchLMError(
            f"vocab_size {vocab_size} is smaller than the 256 byte tokens + {len(specials)} special tokens"
        )
    if chunk_bytes < 1024:
        raise ScratchLMError(f"chunk_bytes must be at least 1024, got {chunk_bytes}")
    counts = count_pretokens_in_file(input_path, specials, num_workers, chunk_bytes, pattern, progress)
    if not counts:
        raise ScratchLMError(f"{input_path} contains no text besides special tokens: nothing to train on")
    return train_bpe_from_counts(counts, vocab_size, specials, progress, backend)
