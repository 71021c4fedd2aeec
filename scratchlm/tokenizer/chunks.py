"""Stream a corpus file as byte chunks of bounded size, cut where tokenization is unaffected.

Chunks end right after a special token (documents stay whole) or, for long stretches without
one, just before a space followed by a printable ASCII character: a pre-token boundary of the
GPT-2 regex where both sides split alone give the pre-tokens of the whole (see
`pretokenize.last_safe_cut`). Every consumer (training, corpus encoding) therefore sees exactly
the pre-tokens of the whole file, with memory bounded by the chunk size.

Chunks stay bytes until a worker process decodes them: the reading process never holds large
strings (a str of non-Latin text takes up to 4 bytes per character). Bytes that are not valid
UTF-8 are replaced by U+FFFD and counted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import regex

from scratchlm.io import check_input_file
from scratchlm.tokenizer.pretokenize import stream_cut

log = logging.getLogger(__name__)

_MAX_CHUNK_FACTOR = 8  # a chunk with no cut point at all is cut hard at this many times chunk_bytes
_SAFE_BYTE_CUT = regex.compile(rb"(?r) (?=[\x21-\x7e])")  # last space followed by printable ASCII


@dataclass
class ChunkStats:
    bytes_read: int = 0
    invalid_utf8: int = 0  # bytes replaced by U+FFFD
    hard_cuts: int = 0  # chunks cut where no safe boundary existed (tokens at the cut may differ)


def decode_utf8(data: bytes) -> tuple[str, int]:
    """(text, number of U+FFFD replacements made for invalid bytes)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - data.count("\ufffd".encode())


def utf8_boundary(data: bytes, end: int) -> int:
    """Largest p <= end that does not fall inside a UTF-8 sequence (for hard cuts only)."""
    p = end
    while p > 0 and end - p < 4 and 0x80 <= data[p] < 0xC0:  # continuation byte: step back
        p -= 1
    return p if p > 0 else end


def special_bytes_splitter(special_tokens: Iterable[str]) -> re.Pattern | None:
    specials = sorted({s.encode("utf-8") for s in special_tokens}, key=lambda s: (-len(s), s))
    return re.compile(b"|".join(re.escape(s) for s in specials)) if specials else None


def byte_cut(buf: bytes, splitter: re.Pattern | None, keep: int) -> int:
    """`pretokenize.stream_cut` on bytes: after the last special token, or a safe space after it."""
    return stream_cut(buf, splitter, keep, _SAFE_BYTE_CUT)


def work_chunk_bytes(file_bytes: int, workers: int, chunk_bytes: int) -> int:
    """Chunk size for `workers` processes: at most `chunk_bytes`, small enough that a small file
    still gives every worker several chunks (64 KiB floor: below that, per-task overhead wins)."""
    if workers <= 1:
        return chunk_bytes
    return min(chunk_bytes, max(file_bytes // (4 * workers), 64 << 10))


def iter_byte_chunks(
    path: str | Path, special_tokens: Iterable[str] = (), chunk_bytes: int = 1 << 20, stats: ChunkStats | None = None
) -> Iterator[bytes]:
    """Yield the bytes of `path` in order, as chunks of about `chunk_bytes` (see module doc)."""
    path = check_input_file(path, "corpus file")
    specials = list(special_tokens)
    splitter = special_bytes_splitter(specials)
    keep = max((len(s.encode("utf-8")) for s in specials), default=1)
    stats = stats if stats is not None else ChunkStats()
    pending = b""
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            stats.bytes_read += len(block)
            pending += block
            if len(pending) < chunk_bytes:
                continue
            cut = byte_cut(pending, splitter, keep)
            if cut == 0 and len(pending) >= _MAX_CHUNK_FACTOR * chunk_bytes:
                cut = utf8_boundary(pending, len(pending) - keep)
                stats.hard_cuts += 1
                log.warning("no safe cut point in %d bytes of %s; cutting hard", len(pending), path)
            if cut:
                yield pending[:cut]
                pending = pending[cut:]
    if pending:
        yield pending
