"""Read gzip files member by member, skipping corrupt members instead of failing.

Common Crawl writes every WARC record as its own gzip member, so one bad member costs one record if
the reader can find the next member. `GzipMembers` decompresses a member fully (up to a cap) before
handing its bytes on: a member that fails its CRC or its deflate stream is dropped whole and reading
resumes at the next gzip header that decompresses; a member cut off by the end of the file hands on
what it had (the format parser then sees a truncated record). Members above the cap stream through,
since one huge member (`gzip file.warc`) cannot be held in memory; a corruption inside one is then
counted and the rest of that member is lost.

Events are reported through `on_event(kind, offset)`: `corrupt_gzip_member`, `truncated_gzip`,
`garbage_between_members`.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from typing import BinaryIO

MAGIC = b"\x1f\x8b\x08"  # gzip id bytes + deflate method
BLOCK = 1 << 20  # compressed bytes read from the file at a time
FEED = 1 << 16  # compressed bytes given to the decompressor at a time (the unused tail is re-fed)
MEMBER_CAP = 32 << 20  # decompressed bytes held back per member before streaming it


def is_gzip(path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == MAGIC[:2]


class GzipMembers(io.RawIOBase):
    """A read-only binary stream of the decompressed members of `raw` (see the module docstring)."""

    def __init__(self, raw: BinaryIO, on_event: Callable[[str, int], None] | None = None, cap: int = MEMBER_CAP):
        self._raw = raw
        self._on_event = on_event or (lambda kind, offset: None)
        self._cap = cap
        self._buf = b""  # compressed bytes read from the file; _buf[_off:] not yet fed
        self._off = 0
        self._buf_pos = 0  # file offset of _buf[0]
        self._eof = False  # no more compressed bytes in the file
        self._d = None  # zlib decompressor of the current member
        self._member_start = 0  # file offset of the current member
        self._member_out: list[bytes] = []  # its output, held until the member checks out
        self._held = 0
        self._streaming = False  # the current member outgrew the cap: output flows through
        self._resyncing = False  # looking for a good member after a failure (reported once)
        self._out = bytearray()
        self._tell = 0
        self._done = False

    # -- io.RawIOBase
    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._tell

    def readinto(self, b) -> int:
        while not self._out and not self._done:
            self._step()
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        del self._out[:n]
        self._tell += n
        return n

    # -- the compressed buffer
    def _avail(self) -> int:
        return len(self._buf) - self._off

    def _fill(self, need: int = 1) -> bool:
        """Read until `need` unfed bytes are buffered (or the file ends)."""
        while self._avail() < need and not self._eof:
            block = self._raw.read(BLOCK)
            if not block:
                self._eof = True
                break
            # Forget fed bytes, except those of a member still held back (a failure rewinds to its start).
            drop = self._off
            if self._d is not None and not self._streaming:
                drop = max(0, min(drop, self._member_start - self._buf_pos))
            self._buf = self._buf[drop:] + block
            self._buf_pos += drop
            self._off -= drop
        return self._avail() >= need

    def _offset(self) -> int:
        return self._buf_pos + self._off

    def _seek_back_to(self, offset: int) -> bool:
        """Make `offset` the next byte to feed, if it is still buffered."""
        if offset < self._buf_pos:
            return False
        self._off = offset - self._buf_pos
        return True

    # -- decompression
    def _step(self) -> None:
        if self._d is None:
            self._start_member()
            return
        if not self._avail() and not self._fill():
            self._end_of_file_inside_member()
            return
        chunk = self._buf[self._off : self._off + FEED]
        self._off += len(chunk)
        try:
            out = self._d.decompress(chunk)
        except zlib.error:
            self._fail()
            return
        if out:
            self._emit(out)
        if self._d.eof:
            self._off -= len(self._d.unused_data)  # those bytes start the next member
            self._finish_member()

    def _start_member(self) -> None:
        if not self._fill(len(MAGIC)):
            if self._buf[self._off :].strip(b"\0") and not self._resyncing:
                self._on_event("garbage_between_members", self._offset())
            self._off = len(self._buf)
            self._done = True
            return
        if not self._buf.startswith(MAGIC, self._off):
            skipped_from = self._offset()
            if not self._skip_to_magic():
                return
            if not self._resyncing:
                self._on_event("garbage_between_members", skipped_from)
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._member_start = self._offset()
        self._member_out, self._held, self._streaming = [], 0, False

    def _skip_to_magic(self) -> bool:
        """Drop bytes up to the next gzip header after the current byte; False (and done) if there is none."""
        while True:
            i = self._buf.find(MAGIC, self._off + 1)
            if i > 0:
                self._off = i
                return True
            if self._eof:
                self._off = len(self._buf)
                self._done = True
                return False
            self._off = max(self._off, len(self._buf) - (len(MAGIC) - 1))  # a header may straddle two reads
            self._fill(self._avail() + BLOCK)

    def _emit(self, out: bytes) -> None:
        if self._streaming:
            self._out += out
            return
        self._member_out.append(out)
        self._held += len(out)
        if self._held > self._cap:  # too big to hold back: let it flow, it can no longer be dropped whole
            self._streaming = True
            self._out += b"".join(self._member_out)
            self._member_out = []

    def _finish_member(self) -> None:
        self._out += b"".join(self._member_out)
        self._d = None
        self._member_out = []
        self._resyncing = False

    def _fail(self) -> None:
        """The current member is corrupt: drop what it produced, look for the next member after its header."""
        if not self._resyncing:
            self._on_event("corrupt_gzip_member", self._member_start)
        self._resyncing = True
        if not self._streaming:
            self._seek_back_to(self._member_start)  # still buffered unless the member was huge
        self._d = None
        self._member_out, self._held = [], 0
        self._skip_to_magic()

    def _end_of_file_inside_member(self) -> None:
        if not self._resyncing:
            self._on_event("truncated_gzip", self._member_start)
            # What decompressed is sound, only incomplete: pass it on for the parser to judge.
            self._out += b"".join(self._member_out)
        self._member_out = []
        self._d = None
        self._done = True
