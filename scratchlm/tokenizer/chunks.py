"""Stream a corpus file as text chunks of bounded size, cut where tokenization is unaffected.

Chunks end right after a special token (documents stay whole) or, for long stretches without
one, at a safe pre-token boundary (see `pretokenize.last_safe_cut`). Every consumer (training,
corpus encoding) therefore sees exactly the pre-tokens of the whole file, with memory bounded
by the chunk size. Bytes that are not valid UTF-8 are replaced by U+FFFD and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scratchlm.io import check_input_file
from scratchlm.tokenizer.pretokenize import special_splitter, stream_cut

log = logging.getLogger(__name__)

_MAX_CHUNK_FACTOR = 8  # a chunk with no cut point at all is cut hard at this many times chunk_bytes


@dataclass
class ChunkStats:
    bytes_read: int = 0
    invalid_utf8: int = 0  # bytes replaced by U+FFFD
    hard_cuts: int = 0  # chunks cut where no safe boundary existed (tokens at the cut may differ)


def utf8_split(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 sequence."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if b < 0x80:  # ASCII: sequence complete
            return n
        if b >= 0xC0:  # lead byte: complete only if its sequence fits
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return n if back >= need else n - back
    return n  # only continuation bytes: invalid anyway, let the decoder replace them


def decode_utf8(data: bytes, stats: ChunkStats) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        stats.invalid_utf8 += text.count("\ufffd") - data.count("\ufffd".encode())
        return text


def work_chunk_bytes(file_bytes: int, workers: int, chunk_bytes: int) -> int:
    """Chunk size for `workers` processes: at most `chunk_bytes`, small enough that a small file
    still gives every worker several chunks (64 KiB floor: below that, per-task overhead wins)."""
    if workers <= 1:
        return chunk_bytes
    return min(chunk_bytes, max(file_bytes // (4 * workers), 64 << 10))


def iter_text_chunks(
    path: str | Path, special_tokens: Iterable[str] = (), chunk_bytes: int = 1 << 22, stats: ChunkStats | None = None
) -> Iterator[str]:
    """Yield the text of `path` in order, as chunks of about `chunk_bytes` (see module doc)."""
    path = check_input_file(path, "corpus file")
    specials = list(special_tokens)
    splitter = special_splitter(specials)
    keep = max((len(s) for s in specials), default=1)
    stats = stats if stats is not None else ChunkStats()
    pending = ""
    carry = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            stats.bytes_read += len(block)
            if not block:
                break
            data = carry + block
            split = utf8_split(data)
            carry = data[split:]
            pending += decode_utf8(data[:split], stats)
            if len(pending) < chunk_bytes:
                continue
            cut = stream_cut(pending, splitter, keep)
            if cut == 0 and len(pending) >= _MAX_CHUNK_FACTOR * chunk_bytes:
                cut = len(pending) - keep
                stats.hard_cuts += 1
                log.warning("no safe cut point in %d characters of %s; cutting hard", len(pending), path)
            if cut:
                yield pending[:cut]
                pending = pending[cut:]
    pending += decode_utf8(carry, stats) if carry else ""
    if pending:
        yield pending
