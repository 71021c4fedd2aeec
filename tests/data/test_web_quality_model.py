"""The hashed n-gram quality classifier: it learns a separable task, numpy inference equals torch, files round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from web_helpers import paragraph, write_jsonl

from scratchlm.cli import main
from scratchlm.data import classify_quality, load_quality_model, train_quality_model
from scratchlm.data.quality_model import QualityTrainConfig, features
from scratchlm.errors import ScratchLMError

SPAM_WORDS = "buy cheap best price click here free shipping discount casino bonus win now limited offer deal".split()


def spam(seed: int, words: int = 120) -> str:
    rng = np.random.default_rng(1000 + seed)
    return " ".join(SPAM_WORDS[i] for i in rng.integers(len(SPAM_WORDS), size=words)) + f" sku{seed}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("quality")
    pos = write_jsonl(d / "pos.jsonl", [{"text": paragraph(s, 120)} for s in range(120)])
    neg = write_jsonl(d / "neg.jsonl", [{"text": spam(s)} for s in range(120)])
    return d, pos, neg


CFG = QualityTrainConfig(buckets=1 << 14, dim=8, epochs=3, valid_fraction=0.25, seed=0)


def test_train_learns_and_reports_validation(corpus):
    d, pos, neg = corpus
    logs = []
    model = train_quality_model([pos], [neg], CFG, out=d / "model", log=logs.append)
    valid = model.meta["valid"]
    assert valid["documents"] == 60 and valid["accuracy"] >= 0.95 and valid["f1"] >= 0.95
    assert any("epoch 3/3" in line for line in logs)
    label, p = classify_quality(paragraph(999, 120), model=d / "model")
    assert label == "hq" and p > 0.5
    assert classify_quality(spam(999), model=d / "model")[0] == "lq"


def test_numpy_inference_equals_torch(corpus):
    import torch

    d, pos, neg = corpus
    model = train_quality_model([pos], [neg], CFG, log=lambda s: None)
    text = paragraph(5, 80)
    ids = torch.from_numpy(features(text, CFG.buckets, CFG.ngrams, CFG.max_words))
    emb = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(model.E), mode="mean")
    logits = emb(ids[None]) @ torch.from_numpy(model.W).T + torch.from_numpy(model.b)
    expected = torch.softmax(logits, dim=-1)[0].numpy()
    np.testing.assert_allclose(model.probabilities(text), expected, rtol=1e-5, atol=1e-6)


def test_save_load_round_trip_and_errors(corpus, tmp_path):
    d, pos, neg = corpus
    model = train_quality_model([pos], [neg], CFG, out=tmp_path / "m", log=lambda s: None)
    loaded = load_quality_model(tmp_path / "m")
    np.testing.assert_array_equal(loaded.E, model.E)
    assert loaded.labels == ["hq", "lq"] and loaded.meta["sha256"]
    with pytest.raises(ScratchLMError, match="already exists"):
        model.save(tmp_path / "m")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ScratchLMError, match="not a scratchlm quality model"):
        load_quality_model(tmp_path / "other")
    with pytest.raises(ScratchLMError, match="at least 2 documents"):
        train_quality_model([pos], [write_jsonl(tmp_path / "one.jsonl", [{"text": "x"}])], CFG)


def test_a_missing_model_is_a_clear_error(monkeypatch, tmp_path):
    # (no model at all: the default one is built, see test_default_quality.py)
    monkeypatch.setenv("SCRATCHLM_QUALITY_MODEL", str(tmp_path / "absent"))
    with pytest.raises(ScratchLMError, match="quality model meta.json not found"):
        classify_quality("text")


def test_cli_train_and_apply(corpus, tmp_path, capsys):
    d, pos, neg = corpus
    args = ["data", "quality", "train", "--positive", str(pos), "--negative", str(neg), "--out", str(tmp_path / "m")]
    args += ["--set", "buckets=16384", "--set", "dim=8", "--set", "epochs=2"]
    assert main(args) == 0
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"text": paragraph(500, 100)}, {"text": spam(500)}])
    out = tmp_path / "scored.jsonl"
    assert (
        main(
            [
                "data",
                "quality",
                "apply",
                "--model",
                str(tmp_path / "m"),
                "--input",
                str(mixed),
                "--out",
                str(out),
                "--threshold",
                "0.5",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["meta"]["quality"] > 0.5
    assert "1 of 2 documents kept" in capsys.readouterr().out
    assert (
        main(["data", "quality", "train", "--positive", str(pos), "--negative", str(neg), "--out", str(tmp_path / "m")])
        == 1
    )
