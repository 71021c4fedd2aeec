"""Download the standard small-LM datasets (TinyStories, the CS336 OpenWebText sample) with urllib.

    scratchlm data download tinystories --split valid        # -> $SCRATCHLM_HOME/datasets/tinystories/
    scratchlm data download owt --out data/                    # gz files are decompressed to .txt

Each file streams in 1 MiB blocks to `<remote name>.part` next to the output, with a progress bar.
An interrupted download resumes from the `.part` file with an HTTP Range request when the server
honours it (206); otherwise it starts again. Gzip files are decompressed while they stream, into a
temp file that is renamed to the final `.txt` only when the whole archive has arrived and checked
out; the `.part` (compressed bytes) is kept until then so a resume can replay it.

Nothing reaches its final name unchecked: the first bytes must look like what the file name promises
(gzip magic for `.gz`, `WARC/` for `.warc`, text that is not an HTML page for `.txt`/`.jsonl`), so a
proxy's or hub's HTML error page served with status 200 is an error naming the URL, and the `.part`
is deleted; the byte count must match the server's Content-Length, and the size and sha256 recorded
in the registry where they are known. A final file that already exists is skipped unless `force`,
after the same check of its first bytes (and size): a bad file left by an older version is fetched
again instead of being skipped forever.

Mirrors: `--url-base URL`, or `SCRATCHLM_<NAME>_URL_BASE` (e.g. `SCRATCHLM_OWT_URL_BASE`), replaces
the directory part of every URL of a dataset; `HF_ENDPOINT` replaces `https://huggingface.co`.
`file://` URLs work too (air-gapped copies, tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import IO

from scratchlm import __version__
from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_write, check_writable, sweep_stale_temps
from scratchlm.progress import progress_bar

log = logging.getLogger(__name__)

BLOCK = 1 << 20  # bytes read from the network per step
TIMEOUT = 60.0  # seconds without data before a connection counts as failed
USER_AGENT = f"scratchlm/{__version__} (+urllib)"
HF = "https://huggingface.co"
# what a dropped, refused or timed-out connection raises (URLError wraps the ones at connect time)
NETWORK_ERRORS = (urllib.error.URLError, HTTPException, ConnectionError, TimeoutError, ssl.SSLError)


def scratchlm_home() -> Path:
    """`$SCRATCHLM_HOME`, default `~/.cache/scratchlm`: where downloads and the default corpus live."""
    env = os.environ.get("SCRATCHLM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scratchlm"


# ---------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class RemoteFile:
    remote: str  # file name under the dataset's base URL
    out: str  # file name written in the output directory
    gzip: bool = False  # decompress while downloading
    size: int | None = None  # bytes of the remote file, where known: a different count is an error
    sha256: str | None = None  # hex sha256 of the remote file, where known: checked before the final rename


@dataclass(frozen=True)
class Dataset:
    base_url: str  # directory URL; overridable, see `dataset_base_url`
    files: dict[str, RemoteFile]  # split name -> file
    about: str  # one line for `--help` and logs


DATASETS: dict[str, Dataset] = {
    "tinystories": Dataset(
        base_url=f"{HF}/datasets/roneneldan/TinyStories/resolve/main",
        files={
            "train": RemoteFile("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-train.txt"),
            "valid": RemoteFile("TinyStoriesV2-GPT4-valid.txt", "TinyStoriesV2-GPT4-valid.txt"),
        },
        about="TinyStories V2 (GPT-4 stories; Eldan & Li 2023, CDLA-Sharing-1.0), ~2.2 GB train + 22 MB valid",
    ),
    "owt": Dataset(
        base_url=f"{HF}/datasets/stanford-cs336/owt-sample/resolve/main",
        files={
            "train": RemoteFile("owt_train.txt.gz", "owt_train.txt", gzip=True),
            "valid": RemoteFile("owt_valid.txt.gz", "owt_valid.txt", gzip=True),
        },
        about="OpenWebText sample used by Stanford CS336 (~11.9 GB train + 290 MB valid once decompressed)",
    ),
}

SPLITS = ("train", "valid", "all")


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ScratchLMError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def url_base_env(name: str) -> str:
    return f"SCRATCHLM_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}_URL_BASE"


def dataset_base_url(name: str, url_base: str | None = None) -> str:
    """`url_base` if given, else `$SCRATCHLM_<NAME>_URL_BASE`, else the registry URL (with `$HF_ENDPOINT`)."""
    base = url_base or os.environ.get(url_base_env(name))
    if not base:
        base = get_dataset(name).base_url
        endpoint = os.environ.get("HF_ENDPOINT")
        if endpoint and base.startswith(HF):
            base = endpoint.rstrip("/") + base[len(HF) :]
    return base.rstrip("/")


def download_dataset(
    name: str,
    out_dir: str | os.PathLike | None = None,
    split: str = "all",
    url_base: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Download `split` (train, valid or all) of dataset `name` into `out_dir`; returns the final paths.

    `out_dir` defaults to `$SCRATCHLM_HOME/datasets/<name>`.
    """
    ds = get_dataset(name)
    if split not in SPLITS:
        raise ScratchLMError(f"unknown split {split!r} for {name}; choose one of {', '.join(SPLITS)}")
    out = Path(out_dir) if out_dir is not None else scratchlm_home() / "datasets" / name
    base = dataset_base_url(name, url_base)
    paths = []
    for s, f in ds.files.items():
        if split in ("all", s):
            url = f"{base}/{f.remote}"
            paths.append(
                fetch(url, out / f.out, gunzip=f.gzip, force=force, progress=progress, size=f.size, sha256=f.sha256)
            )
    return paths


# ---------------------------------------------------------------------------------------------
# fetching one URL


def fetch(
    url: str,
    dest: str | os.PathLike,
    gunzip: bool = False,
    force: bool = False,
    progress: bool = True,
    timeout: float = TIMEOUT,
    size: int | None = None,
    sha256: str | None = None,
) -> Path:
    """Download `url` to `dest` (decompressing gzip if `gunzip`): resumable, atomic, checked (see the module
    docstring; `size` and `sha256` of the remote bytes where known), skipped if a good `dest` exists."""
    dest = Path(dest)
    remote_name = Path(urllib.parse.urlparse(url).path).name or dest.name
    kind = content_kind(remote_name)
    if dest.exists() and not force:
        problem = existing_file_problem(dest, content_kind(dest.name), None if gunzip else size)
        if problem is None:
            log.info("%s exists, skipping (force to download again)", dest)
            return dest
        log.warning("%s exists but %s: downloading it again", dest, problem)
        force = True
    check_writable(dest, "download")
    sweep_stale_temps(dest)  # a decompressed temp file of a download that was killed (can be gigabytes)
    part = dest.with_name(f"{remote_name}.part")
    if force:
        part.unlink(missing_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    sha = hashlib.sha256() if sha256 else None

    try:
        with _open(url, offset, timeout) as (stream, start, total):
            if start != offset:  # the server ignored our Range: start again
                log.info("%s: server does not resume, starting over", url)
            if size is not None and total is not None and total != size:
                raise _BadContent(f"{url} is {total:,} bytes, expected {size:,}: not the expected file")
            if start:  # a resume: the part's own first bytes are checked (and hashed) before more are added
                with open(part, "rb") as old:
                    _check_head(url, kind, old.read(HEAD), "")
                if sha is not None:
                    sha = _hash_prefix(part, start)
            out_ctx = atomic_write(dest, "wb") if gunzip else contextlib.nullcontext()
            with out_ctx as out, _open_part(part, start) as raw:
                gz = _Gunzip(url) if gunzip else None
                if gz is not None and start:  # replay what we already have through the decompressor
                    with open(part, "rb") as old:
                        while block := old.read(BLOCK):
                            out.write(gz.feed(block))
                with progress_bar(
                    progress,
                    total=total,
                    initial=start,
                    desc=dest.name,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                ) as bar:
                    got = start
                    while block := stream.read(BLOCK):
                        if got == 0:  # the first bytes decide whether this is the file at all
                            _check_head(url, kind, block[:HEAD], _content_type(stream))
                        if sha is not None:
                            sha.update(block)
                        raw.write(block)
                        if gz is not None:
                            out.write(gz.feed(block))
                        got += len(block)
                        bar.update(len(block))
                raw.flush()
                os.fsync(raw.fileno())
                if got == 0:
                    raise _BadContent(f"{url} sent no data")
                expected = total if total is not None else size
                if expected is not None and got < expected:
                    raise ScratchLMError(
                        f"download of {url} stopped at {got:,} of {expected:,} bytes; run again to resume from {part}"
                    )
                if size is not None and got != size:
                    raise _BadContent(f"{url} sent {got:,} bytes, expected {size:,}: not the expected file")
                if sha is not None and sha.hexdigest() != sha256.lower():
                    raise _BadContent(
                        f"{url} has sha256 {sha.hexdigest()}, expected {sha256.lower()}: a corrupt or different file"
                    )
                if gz is not None:
                    gz.finish()
    except _BadContent as e:
        part.unlink(missing_ok=True)  # wrong bytes: a resume would build on them
        raise ScratchLMError(f"{e}; nothing was saved") from None
    except _CorruptGzip as e:
        part.unlink(missing_ok=True)  # bad bytes: a resume would replay them
        raise ScratchLMError(str(e)) from None
    except NETWORK_ERRORS as e:
        raise _network_error(url, e, part) from None
    except OSError as e:  # the local side: disk full, permissions
        raise ScratchLMError(f"could not write {dest} while downloading {url}: {e}") from None

    if gunzip:
        part.unlink(missing_ok=True)
    else:
        os.replace(part, dest)
    log.info("wrote %s", dest)
    return dest


def read_url(url: str, timeout: float = TIMEOUT, headers: dict[str, str] | None = None) -> bytes:
    """The whole body of a small resource (an index page), with the same error messages as `fetch`."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()
    except NETWORK_ERRORS as e:
        raise _network_error(url, e, None) from None


@contextlib.contextmanager
def _open(url: str, offset: int, timeout: float) -> Iterator[tuple[IO[bytes], int, int | None]]:
    """Yield (body stream, byte offset it starts at, total size or None), asking to resume at `offset`."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        if not path.is_file():
            raise ScratchLMError(f"could not download {url}: no such file")
        size = path.stat().st_size
        start = offset if offset <= size else 0
        with open(path, "rb") as f:
            f.seek(start)
            yield f, start, size
        return
    if parsed.scheme not in ("http", "https"):
        raise ScratchLMError(f"unsupported URL scheme in {url!r} (use http, https or file)")

    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:
            raise
        # Range not satisfiable: the .part may already be complete ("bytes */N" with N == offset).
        m = re.fullmatch(r"bytes \*/(\d+)", e.headers.get("Content-Range", "") or "")
        e.close()
        if m and int(m.group(1)) == offset:
            yield _Empty(), offset, offset
            return
        resp = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": USER_AGENT}), timeout=timeout)
    with resp:
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if resp.status == 206:
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if m and int(m.group(1)) == offset:
                total = int(m.group(2)) if m.group(2) != "*" else None
                yield resp, offset, total
                return
            # a range we did not ask for: fetch the whole file instead
            resp.close()
            with urllib.request.urlopen(
                urllib.request.Request(url, headers={"User-Agent": USER_AGENT}), timeout=timeout
            ) as full:
                n = full.headers.get("Content-Length")
                yield full, 0, int(n) if n and n.isdigit() else None
            return
        yield resp, 0, length


HEAD = 512  # bytes sniffed at the start of a download

# what a gateway, proxy or hub serves instead of the file (with status 200 or after a redirect)
_MARKUP = (b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<title")


def content_kind(name: str) -> str | None:
    """What a file named `name` must start like: "gzip", "warc", "text", or None (no check)."""
    name = name.lower()
    if name.endswith((".gz", ".tgz")):
        return "gzip"
    if name.endswith(".warc"):
        return "warc"
    if name.endswith((".txt", ".jsonl", ".json", ".csv", ".tsv", ".md")):
        return "text"
    return None


def content_problem(head: bytes, kind: str | None, content_type: str = "") -> str | None:
    """Why the first bytes `head` of a file are not of `kind`, or None if they look right."""
    if kind is None:
        return None
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    served = f" (served as {content_type})" if content_type else ""
    if start.startswith(_MARKUP):
        return f"it is an HTML/XML page{served}, starting {head[:60]!r}"
    if kind == "gzip" and not head.startswith(b"\x1f\x8b"):
        return f"it is not valid gzip data{served}: it starts {head[:20]!r}, not the magic bytes 1f 8b"
    if kind == "warc" and not head.startswith(b"WARC/"):
        return f"it is not a WARC file{served}: it starts {head[:20]!r}, not 'WARC/'"
    if kind == "text" and b"\x00" in head:
        return f"it is binary data{served}, not text"
    return None


def existing_file_problem(path: Path, kind: str | None, size: int | None) -> str | None:
    """Why an existing download at `path` is not a finished good one (None if it looks right)."""
    if not path.is_file():
        return "is not a file"
    n = path.stat().st_size
    if n == 0:
        return "is empty"
    if size is not None and n != size:
        return f"has {n:,} bytes, not {size:,}"
    with open(path, "rb") as f:
        return content_problem(f.read(HEAD), kind)


_WHAT = {"gzip": "gzip file", "warc": "WARC file", "text": "text file"}


class _BadContent(Exception):
    pass


def _check_head(url: str, kind: str | None, head: bytes, content_type: str) -> None:
    problem = content_problem(head, kind, content_type)
    if problem is not None:
        raise _BadContent(f"{url} did not serve the expected {_WHAT[kind]}: {problem}")


def _content_type(stream) -> str:
    headers = getattr(stream, "headers", None)
    return (headers.get("Content-Type", "") if headers is not None else "") or ""


def _hash_prefix(path: Path, n: int):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while n > 0 and (block := f.read(min(BLOCK, n))):
            h.update(block)
            n -= len(block)
    return h


class _Empty:
    def read(self, n: int = -1) -> bytes:
        return b""


@contextlib.contextmanager
def _open_part(part: Path, start: int) -> Iterator[IO[bytes]]:
    """The `.part` file, positioned at `start` (appending on resume, truncated on a fresh start)."""
    if start:
        with open(part, "r+b") as f:
            f.truncate(start)
            f.seek(start)
            yield f
    else:
        with open(part, "wb") as f:
            yield f


class _CorruptGzip(Exception):
    pass


class _Gunzip:
    """Streaming gzip decompression, including files of several concatenated gzip members."""

    def __init__(self, url: str):
        self.url = url
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.seen = False

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            self.seen = True
            try:
                out.append(self.d.decompress(data))
            except zlib.error as e:
                raise _CorruptGzip(
                    f"{self.url} is not valid gzip data ({e}); the partial download was deleted"
                ) from None
            if not self.d.eof:
                break
            data = self.d.unused_data  # another member follows
            if data:
                self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return b"".join(out)

    def finish(self) -> None:
        if not self.seen or not self.d.eof:
            raise _CorruptGzip(f"{self.url} ended in the middle of its gzip data; the partial download was deleted")


def _network_error(url: str, e: BaseException, part: Path | None) -> ScratchLMError:
    keep = f"; the partial download {part} is kept, run again to resume" if part is not None and part.exists() else ""
    if isinstance(e, urllib.error.HTTPError):
        return ScratchLMError(f"could not download {url}: HTTP {e.code} {e.reason}{keep}")
    if isinstance(e, (HTTPException, ConnectionError)):  # after connecting: the transfer broke off
        return ScratchLMError(f"could not download {url}: the connection broke off ({type(e).__name__}){keep}")
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, TimeoutError):
        reason = "timed out"
    return ScratchLMError(
        f"could not download {url}: {reason} (is this machine offline? set a mirror with --url-base){keep}"
    )
