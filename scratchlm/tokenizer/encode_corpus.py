"""Corpus -> token file, in parallel, streamed, atomic.

The corpus is cut into chunks where tokenization is unaffected (after a special token, or at a
safe pre-token boundary: see `chunks.py`), each chunk is encoded in a worker process, and the
results are appended in order to a temp file that is renamed into place at the end together
with its sidecar. The ids are exactly those of `Tokenizer.encode(whole_file)`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_write, check_input_file, check_writable, sweep_stale_temps, write_json
from scratchlm.progress import progress_bar
from scratchlm.tokenizer.chunks import ChunkStats, decode_utf8, iter_byte_chunks, work_chunk_bytes
from scratchlm.tokenizer.token_file import TOKENS_FORMAT, TOKENS_VERSION, sidecar_path, token_dtype
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.workers import resolve_workers, worker_pool

log = logging.getLogger(__name__)

_worker_tok: Tokenizer | None = None


def _init_worker(tok: Tokenizer) -> None:
    global _worker_tok
    _worker_tok = tok


def _encode_chunk(data: bytes, dtype: str) -> tuple[bytes, int]:
    """Token ids of one chunk as raw `dtype` bytes, and its count of invalid UTF-8 bytes."""
    text, invalid = decode_utf8(data)
    return np.asarray(_worker_tok.encode(text), dtype=dtype).tobytes(), invalid


def encode_file(
    tok: Tokenizer,
    input_path: str | Path,
    output_path: str | Path,
    num_workers: int | None = None,
    chunk_bytes: int = 1 << 20,
    progress: bool = False,
    overwrite: bool = False,
    tokenizer_source: str | None = None,
) -> dict:
    """Encode `input_path` into `output_path` (+ `<output>.json`). Returns the sidecar dict."""
    input_path = check_input_file(input_path, "corpus file")
    if chunk_bytes < 1:
        raise ScratchLMError(f"chunk size must be > 0 bytes (--chunk-mb > 0), got {chunk_bytes} bytes")
    if num_workers is not None and num_workers < 0:
        raise ScratchLMError(f"the number of workers must be >= 0 (0 = one per core), got {num_workers}")
    output_path = Path(output_path)
    if output_path.exists() and not overwrite:
        raise ScratchLMError(f"{output_path} already exists (pass --force / overwrite=True to replace it)")
    if output_path.resolve() == input_path.resolve():
        raise ScratchLMError("the output token file must not be the input corpus")
    check_writable(output_path, "token file", file=True)
    for leftover in [*sweep_stale_temps(output_path), *sweep_stale_temps(sidecar_path(output_path))]:
        log.info("removed %s, left by an encode that was killed", leftover)
    dtype = token_dtype(tok.vocab_size)
    workers = resolve_workers(num_workers, "workers")
    sep, sep_id = tok.end_of_text, tok.end_of_text_id
    stats = ChunkStats()
    chunk_bytes = work_chunk_bytes(input_path.stat().st_size, workers, chunk_bytes)
    chunks = iter_byte_chunks(input_path, tok.special_tokens, chunk_bytes, stats)
    count = docs = 0
    t0 = time.perf_counter()
    with (
        atomic_write(output_path, "wb") as out,
        progress_bar(progress, total=input_path.stat().st_size, desc="encode", unit="B", unit_scale=True) as bar,
    ):

        def write(result: tuple[bytes, int]) -> None:
            nonlocal count, docs
            data, invalid = result
            stats.invalid_utf8 += invalid
            out.write(data)
            ids = np.frombuffer(data, dtype=dtype)
            count += ids.size
            if sep_id is not None:
                docs += int(np.count_nonzero(ids == sep_id))
            bar.update(stats.bytes_read - bar.n)

        if workers == 1:
            _init_worker(tok)
            for data in chunks:
                write(_encode_chunk(data, dtype.str))
        else:
            with worker_pool(workers, initializer=_init_worker, initargs=(tok,)) as pool:  # they die with us
                inflight: deque[Future] = deque()  # bounded, written back in order
                for data in chunks:
                    inflight.append(pool.submit(_encode_chunk, data, dtype.str))
                    if len(inflight) >= 2 * workers:
                        write(inflight.popleft().result())
                while inflight:
                    write(inflight.popleft().result())
        bar.update(stats.bytes_read - bar.n)
        meta = {
            "format": TOKENS_FORMAT,
            "version": TOKENS_VERSION,
            "dtype": dtype.name,
            "count": count,
            "vocab_size": tok.vocab_size,
            "tokenizer_hash": tok.hash,
            "tokenizer": tokenizer_source,
            "doc_separator": sep,
            "doc_separator_id": sep_id,
            "documents": docs,
            "source": str(input_path.resolve()),
            "source_bytes": stats.bytes_read,
            "invalid_utf8_bytes": stats.invalid_utf8,
            "bytes_per_token": stats.bytes_read / max(count, 1),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        # The sidecar is written while the data file is still a temp file: if this fails, neither lands.
        write_json(sidecar_path(output_path), meta)
    return meta
