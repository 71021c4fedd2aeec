"""Readers: WARC / WET archives, JSONL and plain text, gzip or not, into `Document`s.

    for doc in read_documents("CC-MAIN-...warc.gz", stats):   # WARC: HTML responses (doc.html), WET: text
        ...

Nothing in a file is fatal: a corrupt gzip member, a truncated record, a line that is not JSON, a
response that is not HTML is counted in `stats` (a `StageStats` named "read") under a reason, with an
example, and reading goes on. WARC parsing is FastWARC's; gzip members are decompressed by
`GzipMembers` so one bad member costs one record, not the rest of the file.
"""

from __future__ import annotations

import codecs
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scratchlm.data.document import Document
from scratchlm.data.gzip_stream import GzipMembers, is_gzip
from scratchlm.data.stats import StageStats
from scratchlm.errors import ScratchLMError

Format = Literal["auto", "warc", "wet", "jsonl", "text", "document"]
HTML_TYPES = ("text/html", "application/xhtml+xml")
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)


@dataclass
class ReadOptions:
    format: Format = "auto"  # auto: from the file name (see `detect_format`)
    text_field: str = "text"  # JSONL key holding the text
    text_separator: str = "<|endoftext|>"  # plain text: documents end with this ("" = the whole file is one document)
    html_only: bool = True  # WARC: keep responses whose content type is HTML (others dropped as not_html)
    ok_status_only: bool = True  # WARC: keep HTTP 2xx responses only (redirects and errors dropped as http_status)


def detect_format(path: str | Path) -> str:
    """warc, wet, jsonl, or text, from the file name (.gz or not)."""
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith(".wet"):
        return "wet"
    if name.endswith((".warc", ".arc")):
        return "warc"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "text"


def read_documents(path: str | Path, stats: StageStats, opts: ReadOptions | None = None) -> Iterator[Document]:
    """Documents of one file, in file order; problems are counted in `stats`, never raised."""
    opts = opts or ReadOptions()
    path = Path(path)
    if not path.is_file():
        raise ScratchLMError(f"input file not found: {path}")
    stats.bytes_in += path.stat().st_size
    fmt = detect_format(path) if opts.format == "auto" else opts.format
    if fmt == "wet":
        fmt = "warc"
    readers = {"warc": _read_warc, "jsonl": _read_jsonl, "text": _read_text, "document": _read_whole}
    for doc in readers[fmt](path, stats, opts):
        stats.docs_out += 1
        stats.bytes_out += doc.nbytes()
        yield doc
    stats.docs_in = stats.docs_out + sum(stats.drops.values())


def open_binary(path: Path, stats: StageStats) -> io.BufferedIOBase:
    """The decompressed bytes of `path` (gzip by magic number), with gzip problems counted in `stats`."""
    raw = open(path, "rb")
    if not is_gzip(path):
        return raw

    def event(kind: str, offset: int) -> None:
        stats.count(kind)
        stats.example(kind, where=f"{path.name} @ byte {offset:,}")

    return io.BufferedReader(GzipMembers(raw, event), buffer_size=1 << 20)


# ---------------------------------------------------------------------------------------------- WARC / WET


def _read_warc(path: Path, stats: StageStats, opts: ReadOptions) -> Iterator[Document]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    wanted = (WarcRecordType.response, WarcRecordType.conversion, WarcRecordType.resource)
    seen = 0
    with open_binary(path, stats) as stream:
        # quirks_mode: skip junk between records instead of stopping at it (one bad record costs one record).
        # Every record type is read (bodies of the others are never touched) so that a file with no WARC
        # records at all is reported instead of silently giving nothing.
        records = iter(ArchiveIterator(stream, parse_http=True, stream_detect=False, quirks_mode=True))
        while True:
            try:
                rec = next(records)
            except StopIteration:
                break
            except _FATAL:
                raise
            except BaseException as e:  # OSError, or pyo3's PanicException (a BaseException) on a malformed stream
                stats.drop("warc_parse_error", detail=f"{type(e).__name__}: {e}", where=f"{path.name}")
                return
            seen += 1
            if rec.record_type not in wanted:
                continue
            doc = _warc_document(rec, path, stats, opts)
            if doc is not None:
                yield doc
    if not seen:
        stats.drop("not_a_warc", detail="no WARC record found", where=path.name)


def _warc_document(rec, path: Path, stats: StageStats, opts: ReadOptions) -> Document | None:
    from fastwarc.warc import WarcRecordType

    record_id = rec.record_id
    url = rec.headers.get("WARC-Target-URI")
    where = f"{path.name} record {record_id} ({url})"
    try:
        body = rec.reader.read()
    except _FATAL:
        raise
    except BaseException as e:
        stats.drop("unreadable_record", detail=f"{type(e).__name__}: {e}", where=where)
        return None
    if len(body) < rec.content_length:
        stats.drop("truncated_record", detail=f"{len(body):,} of {rec.content_length:,} bytes", where=where)
        return None
    doc_id = (record_id or f"{path.name}:{rec.stream_pos}").removeprefix("<urn:uuid:").removesuffix(">")
    doc = Document(id=doc_id, url=url, source=str(path), record_id=record_id)
    if rec.record_type != WarcRecordType.response:  # WET conversion / resource records: already text
        doc.text = _decode_text(body)
        return doc
    if not rec.is_http or not rec.is_http_parsed:
        stats.drop("not_http", where=where)
        return None
    status = rec.http_headers.status_code
    if opts.ok_status_only and not 200 <= status < 300:
        stats.drop("http_status", detail=str(status), where=where)
        return None
    ctype = (rec.http_content_type or "").lower()
    if opts.html_only and ctype not in HTML_TYPES and not (not ctype and body.lstrip()[:1] == b"<"):
        stats.drop("not_html", detail=ctype or "no content type", where=where)
        return None
    encoding = (rec.http_headers.get("Content-Encoding") or "").strip().lower()
    if encoding not in ("", "identity"):  # Common Crawl stores decoded payloads; other archives may not
        try:
            body = _content_decode(body, encoding)
        except Exception as e:
            stats.drop("bad_content_encoding", detail=f"{encoding}: {e}", where=where)
            return None
    doc.html = body
    return doc


def _content_decode(body: bytes, encoding: str) -> bytes:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as some servers send
    if encoding == "br":
        import brotli

        return brotli.decompress(body)
    raise ValueError("unsupported content encoding")


def _decode_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------- JSONL / text


def _read_jsonl(path: Path, stats: StageStats, opts: ReadOptions) -> Iterator[Document]:
    with open_binary(path, stats) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {n}"
            try:
                rec = json.loads(line.decode("utf-8", "replace"))
            except json.JSONDecodeError as e:
                stats.drop("bad_json", detail=str(e), where=where)
                continue
            if not isinstance(rec, dict):
                stats.drop("bad_json", detail=f"a JSON {type(rec).__name__}, not an object", where=where)
                continue
            try:
                doc = Document.from_record(rec, opts.text_field, f"{path.name}:{n}", str(path))
            except (KeyError, TypeError) as e:
                stats.drop("no_text_field", detail=f"{opts.text_field!r}: {e}", where=where)
                continue
            if not doc.text.strip():
                stats.drop("empty", doc, where=where)
                continue
            yield doc


def _read_text(path: Path, stats: StageStats, opts: ReadOptions) -> Iterator[Document]:
    sep = opts.text_separator
    if not sep:
        yield from _read_whole(path, stats, opts)
        return
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = ""
    n = 0
    with open_binary(path, stats) as f:
        while True:
            block = f.read(1 << 20)
            new = decoder.decode(block, final=not block)
            if block and sep not in pending[-len(sep) + 1 :] + new[: len(sep)] and sep not in new:
                pending += new  # no document ends here: do not rescan a long pending text
                continue
            pending += new
            parts = pending.split(sep)
            pending = parts.pop()  # may continue in the next block
            if not block:
                parts.append(pending)
            for text in parts:
                if text.strip():  # the empty tail after a final separator is not a document
                    yield Document(id=f"{path.name}:{n}", text=text, source=str(path))
                    n += 1
            if not block:
                return


def _read_whole(path: Path, stats: StageStats, opts: ReadOptions) -> Iterator[Document]:
    """The whole file is one document (the file-level dedup functions' unit)."""
    with open_binary(path, stats) as f:
        text = _decode_text(f.read())
    if text.strip():
        yield Document(id=path.name, text=text, source=str(path))
    else:
        stats.drop("empty", where=path.name)
