"""Readers: synthetic WARC/WET/JSONL/text files, including corrupt and truncated ones, and the real CC files."""

from __future__ import annotations

import gzip
import io
import json

import pytest
from shared_data import shared_file
from web_helpers import ENGLISH, html_page, warc_record, write_jsonl, write_warc

from scratchlm.data.gzip_stream import GzipMembers
from scratchlm.data.readers import ReadOptions, detect_format, read_documents
from scratchlm.data.stats import StageStats

pytest.importorskip("fastwarc")


def read(path, **opts):
    stats = StageStats("read")
    docs = list(read_documents(path, stats, ReadOptions(**opts)))
    return docs, stats


def records(n: int) -> list[bytes]:
    return [warc_record(f"http://example.com/{i}", html_page(f"Page {i}. {ENGLISH}"), f"id-{i}") for i in range(n)]


# ---------------------------------------------------------------------------------------------- gzip members


def members(n: int) -> tuple[list[bytes], list[bytes]]:
    plain = [f"member {i} ".encode() * (i + 3) for i in range(n)]
    return plain, [gzip.compress(p) for p in plain]


def decompress(data: bytes, cap: int = 1 << 20) -> tuple[bytes, list[str]]:
    events = []
    stream = io.BufferedReader(GzipMembers(io.BytesIO(data), lambda kind, offset: events.append(kind), cap=cap))
    return stream.read(), events


def test_gzip_members_skip_a_corrupt_member_and_keep_the_rest():
    plain, comp = members(6)
    bad = bytearray(comp[2])
    bad[12:20] = b"\xff" * 8  # inside the deflate stream
    out, events = decompress(b"".join(comp[:2]) + bytes(bad) + b"".join(comp[3:]))
    assert out == b"".join(plain[:2] + plain[3:])
    assert events == ["corrupt_gzip_member"]


def test_gzip_members_bad_crc_is_a_corrupt_member():
    plain, comp = members(3)
    bad = bytearray(comp[1])
    bad[-8] ^= 0xFF  # CRC32 in the trailer
    out, events = decompress(comp[0] + bytes(bad) + comp[2])
    assert out == plain[0] + plain[2]
    assert events == ["corrupt_gzip_member"]


def test_gzip_members_truncated_and_garbage():
    plain, comp = members(3)
    out, events = decompress(b"".join(comp)[:-5])
    assert out.startswith(plain[0] + plain[1]) and events == ["truncated_gzip"]
    out, events = decompress(comp[0] + b"JUNK JUNK" + comp[1] + b"\0" * 64)  # zero padding at the end is fine
    assert out == plain[0] + plain[1] and events == ["garbage_between_members"]


def test_gzip_members_large_member_streams_past_the_cap():
    data = b"".join(f"line {i}\n".encode() for i in range(20_000))
    out, events = decompress(gzip.compress(data), cap=1000)
    assert out == data and events == []


# ---------------------------------------------------------------------------------------------- WARC


@pytest.mark.parametrize("gz", [True, False])
def test_warc_reader_yields_html_responses_with_provenance(tmp_path, gz):
    recs = records(3)
    recs.insert(
        1,
        warc_record(
            "http://example.com/req", b"GET / HTTP/1.1\r\n\r\n", "req", "application/http", record_type="request"
        ),
    )
    path = write_warc(tmp_path / ("a.warc.gz" if gz else "a.warc"), recs, gz=gz)
    docs, stats = read(path)
    assert [d.url for d in docs] == [f"http://example.com/{i}" for i in range(3)]
    assert docs[0].record_id == "<urn:uuid:id-0>" and docs[0].id == "id-0"
    assert docs[0].source == str(path) and docs[0].html.startswith(b"<html>") and docs[0].text == ""
    assert stats.docs_out == 3 and stats.drops == {}


def test_warc_reader_counts_and_skips_bad_records(tmp_path):
    recs = records(6)
    recs[1] = warc_record("http://example.com/pdf", b"%PDF-1.4 ...", "pdf", "application/pdf")
    recs[2] = warc_record("http://example.com/moved", b"<html>moved</html>", "moved", status="301 Moved Permanently")
    comp = [gzip.compress(r) for r in recs]
    bad = bytearray(comp[3])
    bad[30:40] = b"\x00" * 10
    comp[3] = bytes(bad)
    comp[5] = gzip.compress(recs[5][:-200])  # a record cut short (Content-Length says more)
    path = tmp_path / "bad.warc.gz"
    path.write_bytes(b"".join(comp))
    docs, stats = read(path)
    assert [d.url for d in docs] == ["http://example.com/0", "http://example.com/4"]
    assert stats.drops == {"not_html": 1, "http_status": 1, "truncated_record": 1}
    assert stats.counters == {"corrupt_gzip_member": 1}
    assert stats.examples["not_html"][0]["detail"] == "application/pdf"
    assert "bad.warc.gz @ byte" in stats.examples["corrupt_gzip_member"][0]["where"]


def test_warc_reader_truncated_file(tmp_path):
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(b"".join(gzip.compress(r) for r in records(3))[:-40])
    docs, stats = read(path)
    assert len(docs) == 2
    assert stats.counters == {"truncated_gzip": 1} and stats.drops == {"truncated_record": 1}


def test_not_a_warc_is_counted_not_raised(tmp_path):
    path = tmp_path / "fake.warc"
    path.write_bytes(b"this is not a web archive\n" * 20)
    docs, stats = read(path)
    assert docs == [] and stats.drops == {"not_a_warc": 1}


def test_html_only_can_be_switched_off(tmp_path):
    path = write_warc(tmp_path / "x.warc.gz", [warc_record("http://e/p", b"plain text", "p", "text/plain")])
    assert read(path)[1].drops == {"not_html": 1}
    docs, _ = read(path, html_only=False)
    assert docs[0].html == b"plain text"


def test_wet_conversion_records_are_text(tmp_path):
    recs = [
        warc_record(
            f"http://e/{i}", f"Plain text {i}\nline two".encode(), f"c{i}", "text/plain", record_type="conversion"
        )
        for i in range(2)
    ]
    path = write_warc(tmp_path / "x.warc.wet.gz", recs)
    assert detect_format(path) == "wet"
    docs, _ = read(path)
    assert [d.text for d in docs] == ["Plain text 0\nline two", "Plain text 1\nline two"] and docs[0].html is None


def test_real_common_crawl_warc_and_wet():
    warc = shared_file("web/whirlwind.warc.gz")
    wet = shared_file("web/whirlwind.warc.wet.gz")
    docs, stats = read(warc)
    assert len(docs) == 1 and docs[0].url == "https://an.wikipedia.org/wiki/Escopete"
    assert len(docs[0].html) == 72848 and stats.drops == {}
    docs, _ = read(wet)
    assert len(docs) == 1 and docs[0].text.startswith("Escopete - Biquipedia")


# ---------------------------------------------------------------------------------------------- JSONL / text


def test_jsonl_reader_keeps_fields_and_counts_bad_lines(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    rows = [{"id": "x1", "text": "first", "url": "http://u", "lang": "en"}, {"text": "second"}]
    data = "".join(json.dumps(r) + "\n" for r in rows) + "not json\n" + '{"body": "no text"}\n' + '{"text": "  "}\n\n'
    path.write_bytes(gzip.compress(data.encode()))
    docs, stats = read(path)
    assert [d.text for d in docs] == ["first", "second"]
    assert docs[0].id == "x1" and docs[0].url == "http://u" and docs[0].extra == {"lang": "en"}
    assert docs[1].id == "d.jsonl.gz:2"
    assert stats.drops == {"bad_json": 1, "no_text_field": 1, "empty": 1}
    assert json.loads(docs[0].to_json())["lang"] == "en"  # unknown fields are written back


def test_jsonl_text_field_option(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"content": "hello"}])
    assert read(path, text_field="content")[0][0].text == "hello"


def test_text_reader_splits_on_separator_across_blocks(tmp_path):
    docs_in = [f"document {i} " + "x" * (300_000 * (i % 3)) for i in range(7)]
    path = tmp_path / "c.txt"
    path.write_text("<|endoftext|>".join(docs_in) + "<|endoftext|>", encoding="utf-8")
    docs, _ = read(path)
    assert [d.text for d in docs] == docs_in
    whole, _ = read(path, text_separator="")
    assert len(whole) == 1


def test_text_reader_replaces_invalid_utf8(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"caf\xe9 ok<|endoftext|>second")
    docs, _ = read(path)
    assert docs[0].text == "caf\ufffd ok" and docs[1].text == "second"


def test_jsonl_lone_surrogates_become_replacement_characters(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "cut emoji \\ud83d here"}\n{"text": "whole \\ud83d\\ude00"}\n')
    docs, _ = read(path)
    assert docs[0].text == "cut emoji \ufffd here" and docs[1].text == "whole \U0001f600"
    docs[0].to_json().encode("utf-8")  # writable as UTF-8


def test_junk_between_uncompressed_records_is_skipped(tmp_path):
    recs = records(3)
    path = tmp_path / "junk.warc"
    path.write_bytes(recs[0] + b"some junk that is not a record\r\n\r\n" + recs[1] + recs[2])
    docs, stats = read(path)
    assert [d.url for d in docs] == [f"http://example.com/{i}" for i in range(3)] and stats.drops == {}
