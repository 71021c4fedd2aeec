"""Download the standard small-LM datasets (TinyStories, the CS336 OpenWebText sample) with urllib.

    scratchlm data download tinystories --split valid        # -> $SCRATCHLM_HOME/datasets/tinystories/
    scratchlm data download owt --out data/                    # gz files are decompressed to .txt

Each file streams in 1 MiB blocks to `<remote name>.part` next to the output, with a progress bar.
An interrupted download resumes from the `.part` file with an HTTP Range request when the server
honours it (206); otherwise it starts again. Gzip files are decompressed while they stream, into a
temp file that is renamed to the final `.txt` only when the whole archive has arrived and checked
out; the `.part` (compressed bytes) is kept until then so a resume can replay it. A final file
that already exists is skipped unless `force`.

Mirrors: `--url-base URL`, or `SCRATCHLM_<NAME>_URL_BASE` (e.g. `SCRATCHLM_OWT_URL_BASE`), replaces
the directory part of every URL of a dataset; `HF_ENDPOINT` replaces `https://huggingface.co`.
`file://` URLs work too (air-gapped copies, tests).
"""

from __future__ import annotations

import contextlib
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
from scratchlm.io import atomic_write
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
            paths.append(fetch(f"{base}/{f.remote}", out / f.out, gunzip=f.gzip, force=force, progress=progress))
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
) -> Path:
    """Download `url` to `dest` (decompressing gzip if `gunzip`): resumable, atomic, skipped if `dest` exists."""
    dest = Path(dest)
    if dest.exists() and not force:
        log.info("%s exists, skipping (force to download again)", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    remote_name = Path(urllib.parse.urlparse(url).path).name or dest.name
    part = dest.with_name(f"{remote_name}.part")
    if force:
        part.unlink(missing_ok=True)
    offset = part.stat().st_size if part.exists() else 0

    try:
        with _open(url, offset, timeout) as (stream, start, total):
            if start != offset:  # the server ignored our Range: start again
                log.info("%s: server does not resume, starting over", url)
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
                        raw.write(block)
                        if gz is not None:
                            out.write(gz.feed(block))
                        got += len(block)
                        bar.update(len(block))
                raw.flush()
                os.fsync(raw.fileno())
                if total is not None and got != total:
                    raise ScratchLMError(
                        f"download of {url} stopped at {got:,} of {total:,} bytes; run again to resume from {part}"
                    )
                if gz is not None:
                    gz.finish()
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
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, TimeoutError):
        reason = "timed out"
    return ScratchLMError(
        f"could not download {url}: {reason} (is this machine offline? set a mirror with --url-base){keep}"
    )
