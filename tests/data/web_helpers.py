"""Builders for the web-data tests: WARC records, gzip members, a tiny fastText model, corpora."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np

ENGLISH = (
    "The committee met on Tuesday to discuss the new library building. Members agreed that the reading "
    "rooms should stay open later during the exam period, and that the budget for new books would grow "
    "next year. Several students spoke about the need for quiet study spaces and better lighting. The "
    "chair thanked everyone for their comments and promised to publish the minutes within a week. "
)


def paragraph(seed: int, words: int = 120) -> str:
    """Deterministic English-like text, different for every seed (so documents are not near-duplicates)."""
    rng = np.random.default_rng(seed)
    vocab = ENGLISH.replace(".", "").replace(",", "").lower().split()  # random order: different texts per seed
    out = []
    for i in range(words):
        out.append(vocab[rng.integers(len(vocab))])
        if i % 12 == 11:
            out[-1] += "."
    text = " ".join(out)
    return text[0].upper() + text[1:] + "."


def html_page(body: str, title: str = "A page", charset: str = "utf-8") -> bytes:
    paras = "".join(f"<p>{p}</p>" for p in body.split("\n\n"))
    page = (
        f"<html><head><meta charset='{charset}'><title>{title}</title><script>var x = 1;</script></head>"
        f"<body><nav>Home | About</nav><article>{paras}</article></body></html>"
    )
    return page.encode(charset, "replace")


def warc_record(
    uri: str,
    payload: bytes,
    record_id: str,
    content_type: str = "text/html; charset=utf-8",
    status: str = "200 OK",
    record_type: str = "response",
) -> bytes:
    """One WARC/1.0 record; a response wraps `payload` in an HTTP message."""
    if record_type == "response":
        block = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        block += payload
        warc_type = "application/http; msgtype=response"
    else:
        block = payload
        warc_type = content_type
    head = (
        f"WARC/1.0\r\nWARC-Type: {record_type}\r\nWARC-Record-ID: <urn:uuid:{record_id}>\r\n"
        f"WARC-Target-URI: {uri}\r\nWARC-Date: 2024-05-18T01:58:10Z\r\nContent-Type: {warc_type}\r\n"
        f"Content-Length: {len(block)}\r\n\r\n"
    ).encode()
    return head + block + b"\r\n\r\n"


def write_warc(path: Path, records: list[bytes], gz: bool = True) -> Path:
    """Records as a WARC file; gzip: one member per record, as Common Crawl writes them."""
    data = b"".join(gzip.compress(r) for r in records) if gz else b"".join(records)
    path.write_bytes(data)
    return path


def write_jsonl(path: Path, rows: list[dict], gz: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_fasttext(path: Path, words: list[str], labels: list[str], inp: np.ndarray, out: np.ndarray) -> Path:
    """A minimal fastText supervised model file (format 12; softmax loss, no subwords, no n-gram buckets)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<ii", 793712314, 12))  # magic, version
        # dim ws epoch minCount neg wordNgrams loss(softmax=3) model(sup=3) bucket minn maxn lrUpdateRate t
        f.write(struct.pack("<12id", inp.shape[1], 5, 5, 1, 5, 1, 3, 3, 0, 0, 0, 100, 1e-4))
        entries = [(w, 0) for w in words] + [(lab, 1) for lab in labels]
        f.write(struct.pack("<iiiqq", len(entries), len(words), len(labels), 100, -1))  # -1: not pruned
        for entry, kind in entries:
            f.write(entry.encode() + b"\0" + struct.pack("<qb", 10, kind))
        for matrix in (inp, out):
            f.write(struct.pack("<?", False))  # not quantized
            f.write(struct.pack("<qq", *matrix.shape))
            f.write(np.ascontiguousarray(matrix, dtype="<f4").tobytes())
    return path
