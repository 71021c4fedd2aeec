"""Dataset downloads, offline: a threaded http.server on 127.0.0.1 (with Range support) and file:// URLs."""

from __future__ import annotations

import gzip
import http.server
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from scratchlm.cli import main
from scratchlm.data import cli as data_cli
from scratchlm.data.download import DATASETS, dataset_base_url, download_dataset, fetch, url_base_env
from scratchlm.errors import ScratchLMError

PAYLOAD = b"".join(b"line %d: once upon a time there was a tiny story.\n" % i for i in range(5000))  # ~250 KB


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET files from `server.root`; honours `Range: bytes=N-` unless `server.ignore_range`."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/redirect/"):  # like huggingface.co/.../resolve/... -> CDN
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = srv.root / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and not srv.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop_after is not None:  # simulate a dropped connection
            self.wfile.write(body[: srv.drop_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root, httpd.requests, httpd.ignore_range, httpd.drop_after = root, [], False, None
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    t.join(5)


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith((".part", ".tmp")))


def test_plain_download(server, tmp_path):
    (server.root / "a.txt").write_bytes(PAYLOAD)
    out = fetch(f"{server.url}/a.txt", tmp_path / "out" / "a.txt", progress=False)
    assert out.read_bytes() == PAYLOAD
    assert _leftovers(out.parent) == []


def test_gzip_is_decompressed(server, tmp_path):
    (server.root / "b.txt.gz").write_bytes(gzip.compress(PAYLOAD))
    out = fetch(f"{server.url}/b.txt.gz", tmp_path / "b.txt", gunzip=True, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert _leftovers(tmp_path) == []


def test_multi_member_gzip(server, tmp_path):
    (server.root / "m.gz").write_bytes(gzip.compress(PAYLOAD[:1000]) + gzip.compress(PAYLOAD[1000:]))
    assert fetch(f"{server.url}/m.gz", tmp_path / "m.txt", gunzip=True, progress=False).read_bytes() == PAYLOAD


def test_resume_with_range(server, tmp_path):
    (server.root / "a.txt").write_bytes(PAYLOAD)
    (tmp_path / "a.txt.part").write_bytes(PAYLOAD[:12345])  # an earlier, interrupted run
    out = fetch(f"{server.url}/a.txt", tmp_path / "a.txt", progress=False)
    assert out.read_bytes() == PAYLOAD
    assert server.requests == [("/a.txt", "bytes=12345-")]
    assert _leftovers(tmp_path) == []


def test_redirect_keeps_the_range(server, tmp_path):
    (server.root / "a.txt").write_bytes(PAYLOAD)
    (tmp_path / "a.txt.part").write_bytes(PAYLOAD[:999])
    assert fetch(f"{server.url}/redirect/a.txt", tmp_path / "a.txt", progress=False).read_bytes() == PAYLOAD
    assert server.requests == [("/redirect/a.txt", "bytes=999-"), ("/a.txt", "bytes=999-")]


def test_resume_gzip_replays_the_part(server, tmp_path):
    gz = gzip.compress(PAYLOAD)
    (server.root / "b.txt.gz").write_bytes(gz)
    (tmp_path / "b.txt.gz.part").write_bytes(gz[: len(gz) // 2])
    out = fetch(f"{server.url}/b.txt.gz", tmp_path / "b.txt", gunzip=True, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert server.requests[0][1] == f"bytes={len(gz) // 2}-"
    assert _leftovers(tmp_path) == []


def test_server_ignoring_range_restarts(server, tmp_path):
    server.ignore_range = True
    (server.root / "a.txt").write_bytes(PAYLOAD)
    (tmp_path / "a.txt.part").write_bytes(b"stale bytes that must not survive")
    assert fetch(f"{server.url}/a.txt", tmp_path / "a.txt", progress=False).read_bytes() == PAYLOAD


def test_complete_part_gets_416_and_finishes(server, tmp_path):
    (server.root / "a.txt").write_bytes(PAYLOAD)
    (tmp_path / "a.txt.part").write_bytes(PAYLOAD)
    assert fetch(f"{server.url}/a.txt", tmp_path / "a.txt", progress=False).read_bytes() == PAYLOAD


def test_dropped_connection_then_resume(server, tmp_path):
    (server.root / "a.txt").write_bytes(PAYLOAD)
    server.drop_after = 50_000
    with pytest.raises(ScratchLMError, match="resume"):
        fetch(f"{server.url}/a.txt", tmp_path / "a.txt", progress=False)
    assert not (tmp_path / "a.txt").exists()
    assert 0 < (tmp_path / "a.txt.part").stat().st_size <= 50_000
    server.drop_after = None
    assert fetch(f"{server.url}/a.txt", tmp_path / "a.txt", progress=False).read_bytes() == PAYLOAD
    assert server.requests[-1][1] is not None  # the second request resumed
    assert _leftovers(tmp_path) == []


def test_404_is_a_clear_error_and_leaves_nothing(server, tmp_path):
    url = f"{server.url}/missing.txt.gz"
    with pytest.raises(ScratchLMError, match=r"missing\.txt\.gz.*404"):
        fetch(url, tmp_path / "missing.txt", gunzip=True, progress=False)
    assert list(tmp_path.iterdir()) == [server.root]


def test_corrupt_gzip_deletes_the_part(server, tmp_path):
    (server.root / "bad.gz").write_bytes(b"this is not gzip at all" * 100)
    with pytest.raises(ScratchLMError, match="not valid gzip"):
        fetch(f"{server.url}/bad.gz", tmp_path / "bad.txt", gunzip=True, progress=False)
    assert list(tmp_path.iterdir()) == [server.root]


def test_truncated_gzip_is_an_error(tmp_path):
    src = tmp_path / "t.gz"
    src.write_bytes(gzip.compress(PAYLOAD)[:-20])
    with pytest.raises(ScratchLMError, match="ended in the middle"):
        fetch(src.as_uri(), tmp_path / "out" / "t.txt", gunzip=True, progress=False)
    assert not (tmp_path / "out" / "t.txt").exists()


def test_offline_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.txt"
    with pytest.raises(ScratchLMError, match=rf"{re.escape(url)}.*offline"):
        fetch(url, tmp_path / "x.txt", progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_skipped_unless_force(server, tmp_path):
    (server.root / "a.txt").write_bytes(PAYLOAD)
    dest = tmp_path / "a.txt"
    dest.write_bytes(b"already here")
    fetch(f"{server.url}/a.txt", dest, progress=False)
    assert dest.read_bytes() == b"already here" and server.requests == []
    fetch(f"{server.url}/a.txt", dest, force=True, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_file_urls(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "p.txt").write_bytes(PAYLOAD)
    (src / "p.txt.gz").write_bytes(gzip.compress(PAYLOAD))
    out = tmp_path / "out"
    assert fetch((src / "p.txt").as_uri(), out / "p.txt", progress=False).read_bytes() == PAYLOAD
    assert fetch((src / "p.txt.gz").as_uri(), out / "q.txt", gunzip=True, progress=False).read_bytes() == PAYLOAD
    (out / "r.txt.part").write_bytes(PAYLOAD[:777])  # resume works for file:// too
    (src / "r.txt").write_bytes(PAYLOAD)
    assert fetch((src / "r.txt").as_uri(), out / "r.txt", progress=False).read_bytes() == PAYLOAD
    with pytest.raises(ScratchLMError, match="no such file"):
        fetch((src / "nope.txt").as_uri(), out / "nope.txt", progress=False)
    assert _leftovers(out) == []


def _owt_fixture(root: Path) -> None:
    for split in ("train", "valid"):
        (root / f"owt_{split}.txt.gz").write_bytes(gzip.compress(f"{split}: ".encode() + PAYLOAD))


def test_download_dataset_with_url_base(server, tmp_path):
    _owt_fixture(server.root)
    paths = download_dataset("owt", tmp_path / "owt", split="valid", url_base=server.url, progress=False)
    assert paths == [tmp_path / "owt" / "owt_valid.txt"]
    assert paths[0].read_bytes() == b"valid: " + PAYLOAD
    assert not (tmp_path / "owt" / "owt_train.txt").exists()


def test_url_base_from_env_and_default_dir(server, tmp_path, monkeypatch):
    _owt_fixture(server.root)
    monkeypatch.setenv("SCRATCHLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(url_base_env("owt"), server.url)
    paths = download_dataset("owt", progress=False)
    home = tmp_path / "home" / "datasets" / "owt"
    assert paths == [home / "owt_train.txt", home / "owt_valid.txt"]
    assert paths[0].read_bytes() == b"train: " + PAYLOAD


def test_base_url_resolution(monkeypatch):
    monkeypatch.delenv(url_base_env("tinystories"), raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert dataset_base_url("tinystories") == DATASETS["tinystories"].base_url
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    assert dataset_base_url("tinystories") == "https://mirror.example/datasets/roneneldan/TinyStories/resolve/main"
    assert dataset_base_url("tinystories", "file:///data/ts/") == "file:///data/ts"
    with pytest.raises(ScratchLMError, match="unknown dataset 'nope'"):
        dataset_base_url("nope")
    with pytest.raises(ScratchLMError, match="unknown split"):
        download_dataset("owt", split="test")


def test_registry_urls():
    ts, owt = DATASETS["tinystories"], DATASETS["owt"]
    assert f"{ts.base_url}/{ts.files['train'].remote}" == (
        "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt"
    )
    assert f"{owt.base_url}/{owt.files['valid'].remote}" == (
        "https://huggingface.co/datasets/stanford-cs336/owt-sample/resolve/main/owt_valid.txt.gz"
    )
    assert owt.files["train"].gzip and owt.files["train"].out == "owt_train.txt"
    assert tuple(sorted(DATASETS)) == data_cli.DATASET_NAMES  # the CLI's choices


def test_cli_download(server, tmp_path, capsys):
    for name in ("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"):
        (server.root / name).write_bytes(PAYLOAD)
    argv = ["data", "download", "tinystories", "--out", str(tmp_path / "ts"), "--url-base", server.url, "--quiet"]
    assert main(argv) == 0
    assert sorted(os.listdir(tmp_path / "ts")) == ["TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"]
    assert "TinyStoriesV2-GPT4-valid.txt" in capsys.readouterr().out
    argv = ["data", "download", "owt", "--out", str(tmp_path / "o"), "--url-base", server.url, "--quiet"]
    assert main(argv) == 1  # 404: one-line error, exit status 1
    assert "HTTP 404" in capsys.readouterr().err
