"""Dedup: exact lines, exact documents, MinHash + LSH with planted near-duplicates, and its pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
from web_helpers import paragraph, write_jsonl

from scratchlm.data import exact_dedup, exact_line_dedup, minhash_dedup
from scratchlm.data.hashing import normalize_for_dedup
from scratchlm.data.minhash import (
    MinHasher,
    UnionFind,
    band_keys,
    candidate_pairs,
    jaccard,
    lsh_threshold,
    word_ngrams,
)
from scratchlm.errors import ScratchLMError

BOILER = ["Subscribe to our newsletter", "Copyright 2024 Example Media", "Share this article"]


def write_docs(tmp_path, texts: dict[str, str]):
    paths = []
    for name, text in texts.items():
        p = tmp_path / "in" / name
        p.parent.mkdir(exist_ok=True)
        p.write_text(text, encoding="utf-8")
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------- exact line dedup


def test_exact_line_dedup_removes_every_copy_of_repeated_lines(tmp_path):
    texts = {
        "a.txt": "\n".join([BOILER[0], "Alpha unique line one.", "", "Alpha unique line two.", BOILER[1]]) + "\n",
        "b.txt": "\n".join([BOILER[0], "Beta unique line.", BOILER[1], BOILER[2]]) + "\n",
        "c.txt": "\n".join(["Gamma line.", BOILER[2], "Gamma line."]),  # repeated inside one document too
    }
    paths = write_docs(tmp_path, texts)
    result = exact_line_dedup(paths, tmp_path / "out")
    out = {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "out").iterdir()}
    assert out == {
        "a.txt": "Alpha unique line one.\n\nAlpha unique line two.\n",  # the blank line and final newline stay
        "b.txt": "Beta unique line.\n",
        "c.txt": "",
    }
    assert result["duplicated_distinct_lines"] == 4 and result["files"] == 3


def test_exact_line_dedup_blank_lines_option_and_jsonl(tmp_path):
    rows = [{"id": "1", "text": "Keep me.\n\nFooter", "lang": "en"}, {"id": "2", "text": "Other.\n\nFooter"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    exact_line_dedup([path], tmp_path / "out", keep_blank_lines=False)
    got = [json.loads(line) for line in (tmp_path / "out" / "d.jsonl").read_text().splitlines()]
    assert [r["text"] for r in got] == ["Keep me.", "Other."]
    assert got[0]["lang"] == "en" and got[0]["id"] == "1"  # other fields untouched


# ---------------------------------------------------------------------------------------------- exact dedup


def test_exact_dedup_keeps_first_copy(tmp_path):
    rows_a = [{"text": "same text"}, {"text": "unique a"}]
    rows_b = [{"text": "unique b"}, {"text": "same text"}, {"text": "same text"}]
    a = write_jsonl(tmp_path / "a.jsonl", rows_a)
    b = write_jsonl(tmp_path / "b.jsonl.gz", rows_b, gz=True)
    result = exact_dedup([a, b], tmp_path / "out")
    assert result == {"files": 2, "kept": 3, "dropped": 2}
    assert (tmp_path / "out" / "a.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()
    import gzip

    kept_b = gzip.decompress((tmp_path / "out" / "b.jsonl.gz").read_bytes()).decode().splitlines()
    assert [json.loads(x)["text"] for x in kept_b] == ["unique b"]


# ---------------------------------------------------------------------------------------------- MinHash + LSH


def near_copy(text: str, changes: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    words = text.split()
    for i in rng.choice(len(words), size=changes, replace=False):
        words[i] = f"edit{seed}x{i}"
    return " ".join(words)


def test_minhash_dedup_removes_planted_near_duplicates(tmp_path):
    base = [paragraph(s, 300) for s in range(6)]
    texts = {f"doc{i}.txt": t for i, t in enumerate(base)}
    texts["doc0_copy.txt"] = near_copy(base[0], 3, seed=1)  # ~95% Jaccard on 5-grams
    texts["doc3_copy.txt"] = near_copy(base[3], 2, seed=2).upper().replace(".", "!")  # case and punctuation differ
    texts["doc3_copy2.txt"] = near_copy(base[3], 2, seed=3)
    texts["doc5_far.txt"] = near_copy(base[5], 60, seed=4)  # 20% of words changed: Jaccard well below 0.8
    paths = write_docs(tmp_path, texts)
    result = minhash_dedup(
        paths, num_hashes=100, num_bands=10, ngrams=5, jaccard_threshold=0.8, output_dir=tmp_path / "out"
    )
    kept = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert kept == sorted([f"doc{i}.txt" for i in range(6)] + ["doc5_far.txt"])
    assert result["dropped"] == 3 and result["clusters"] == 2
    assert (tmp_path / "out" / "doc0.txt").read_text() == base[0]  # kept documents are unchanged


def test_minhash_dedup_jsonl_and_threshold(tmp_path):
    base = paragraph(7, 200)
    rows = [{"text": base}, {"text": near_copy(base, 4, 1)}, {"text": paragraph(8, 200)}, {"text": "  "}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    minhash_dedup([path], 128, 16, 5, 0.8, tmp_path / "out")
    assert len((tmp_path / "out" / "d.jsonl").read_text().splitlines()) == 3  # the empty row passes through
    minhash_dedup([path], 128, 16, 5, 0.99, tmp_path / "strict")
    assert len((tmp_path / "strict" / "d.jsonl").read_text().splitlines()) == 4  # not similar enough


def test_minhash_dedup_rejects_bad_settings(tmp_path):
    p = write_docs(tmp_path, {"a.txt": "x"})
    with pytest.raises(ScratchLMError, match="must divide"):
        minhash_dedup(p, 100, 7, 5, 0.8, tmp_path / "out")
    with pytest.raises(ScratchLMError, match="overwrite the input"):
        minhash_dedup(p, 100, 10, 5, 0.8, tmp_path / "in")


def test_minhash_estimates_jaccard():
    mh = MinHasher(num_hashes=512, ngrams=3, seed=0)
    base = paragraph(11, 400)
    for changes in (0, 10, 40, 120):
        other = near_copy(base, changes, seed=changes)
        true = jaccard(word_ngrams(base, 3), word_ngrams(other, 3))
        est = float((mh.signature(base) == mh.signature(other)).mean())
        se = max(np.sqrt(true * (1 - true) / 512), 1e-3)
        assert abs(est - true) < 4 * se + 1e-9, (changes, true, est)


def test_lsh_candidates_follow_the_s_curve():
    mh = MinHasher(num_hashes=128, ngrams=5, seed=3)
    base = paragraph(12, 400)
    close = [near_copy(base, 5, seed=s) for s in range(20)]  # Jaccard ~ 0.94
    far = [near_copy(base, 150, seed=100 + s) for s in range(20)]  # Jaccard ~ 0.05
    sigs = np.stack([mh.signature(t) for t in [base, *close, *far]])
    pairs = candidate_pairs(band_keys(sigs, 16))
    with_base = {j for i, j in pairs if i == 0}
    assert lsh_threshold(128, 16) == pytest.approx((1 / 16) ** (1 / 8))
    assert len(with_base & set(range(1, 21))) >= 19  # P(candidate | s=0.94) ~ 1
    assert not with_base & set(range(21, 41))  # P(candidate | s=0.05) ~ 0


def test_normalisation_and_union_find():
    assert normalize_for_dedup("  Héllo,\tWORLD!!  Ça va?") == "hello world ca va"
    uf = UnionFind(5)
    uf.union(3, 4)
    uf.union(4, 1)
    assert {uf.find(i) for i in (1, 3, 4)} == {1} and uf.find(0) == 0
    assert jaccard(set(), set()) == 0.0  # empty documents are never duplicates
    assert word_ngrams("a b", 5) == {"a b"}
