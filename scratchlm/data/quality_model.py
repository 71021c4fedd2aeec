"""A trainable quality classifier: fastText-style hashed word n-grams -> mean embedding -> linear -> softmax.

    model = train_quality_model(["wiki_linked.jsonl"], ["cc_random.jsonl"], QualityTrainConfig(), out="qmodel/")
    classify_quality(text, model="qmodel/")        # ("hq", 0.93) or ("lq", ...)
    classify_quality(text)                         # $SCRATCHLM_QUALITY_MODEL, else a toy default (default_quality.py)

The model is Joulin et al. 2016 ("Bag of Tricks for Efficient Text Classification"): each lower-cased
word and word n-gram (n <= `ngrams`) is hashed into one of `buckets` rows of an embedding table E
(buckets, dim); a document is the mean of its rows, h (dim,); logits = W h + b. Training runs in torch
(sparse embedding gradients, Adam); inference is numpy on the saved arrays, so filtering workers never
import torch. Files: `<dir>/model.safetensors` (E, W, b) + `<dir>/meta.json` (format, labels, settings,
validation metrics), written atomically.

Recipe (the CS336 / GPT-3 / DCLM idea: "looks like text we trust" vs "looks like a random page"):
positives are documents from sources you trust -- the pages Wikipedia cites (sample URLs from the
enwiki external-links dump, fetch them into a WARC with `wget --warc-file`), or OpenWebText, books,
curated instruction data; negatives are random Common Crawl documents. Run both through the same
pipeline stages you apply before this classifier (extract, language, Gopher rules), so the model
learns quality rather than the artefacts those stages remove, and balance the classes (or let
`balance = true` weight them). Then pick the threshold on held-out data: it is the knob that trades
tokens kept for quality.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from scratchlm.data.hashing import ngram_hashes, word_hashes
from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_dir, read_json, write_json

FORMAT = "scratchlm-quality-model"
VERSION = 1
_WORD = re.compile(r"\w+")
MODEL_ENV = "SCRATCHLM_QUALITY_MODEL"


@dataclass
class QualityTrainConfig:
    positive_label: str = "hq"  # label of the trusted documents
    negative_label: str = "lq"  # label of the random documents
    buckets: int = 1 << 18  # hashed feature rows: collisions vs model size (buckets * dim * 4 bytes)
    dim: int = 16  # embedding size (fastText's default is 100; 16 is plenty for two classes)
    ngrams: int = 2  # word n-grams up to this n (fastText -wordNgrams)
    epochs: int = 5
    lr: float = 0.05  # Adam learning rate
    batch_size: int = 64
    valid_fraction: float = 0.1  # held out for the reported metrics
    max_words: int = 2000  # words per document used (the start): bounds memory on huge pages
    balance: bool = True  # weight the loss so both classes count equally
    seed: int = 0

    def validate(self) -> None:
        if self.buckets < 1 or self.dim < 1 or self.ngrams < 1 or self.epochs < 1:
            raise ScratchLMError("buckets, dim, ngrams and epochs must be >= 1")
        if not 0 <= self.valid_fraction < 1:
            raise ScratchLMError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")


def features(text: str, buckets: int, ngrams: int, max_words: int) -> np.ndarray:
    """Bucket ids (int64) of the document's words and word n-grams; one id for an empty text."""
    words = _WORD.findall(text.lower())[:max_words]
    wh = word_hashes(words)
    if wh.size == 0:
        return np.zeros(1, dtype=np.int64)  # row 0 stands for "no words"
    parts = [wh] + [ngram_hashes(wh, n) for n in range(2, ngrams + 1) if wh.size >= n]
    return (np.concatenate(parts) % np.uint64(buckets)).astype(np.int64)


@dataclass
class QualityModel:
    E: np.ndarray  # (buckets, dim) float32
    W: np.ndarray  # (C, dim)
    b: np.ndarray  # (C,)
    labels: list[str]
    ngrams: int
    max_words: int
    meta: dict

    def probabilities(self, text: str) -> np.ndarray:
        ids = features(text, self.E.shape[0], self.ngrams, self.max_words)
        h = self.E[ids].mean(axis=0)  # (dim,)
        logits = self.W @ h + self.b  # (C,)
        p = np.exp(logits - logits.max())
        return p / p.sum()

    def predict(self, text: str) -> tuple[str, float]:
        p = self.probabilities(text)
        k = int(p.argmax())
        return self.labels[k], float(p[k])

    def save(self, out: str | Path, overwrite: bool = False) -> None:
        from safetensors.numpy import save_file

        with atomic_dir(out, overwrite=overwrite) as tmp:
            save_file({"E": self.E, "W": self.W, "b": self.b}, str(tmp / "model.safetensors"))
            digest = hashlib.sha256((tmp / "model.safetensors").read_bytes()).hexdigest()
            write_json(tmp / "meta.json", {**self.meta, "format": FORMAT, "version": VERSION, "sha256": digest})


def load_quality_model(path: str | Path) -> QualityModel:
    from safetensors.numpy import load_file

    path = Path(path)
    meta = read_json(path / "meta.json", "quality model meta.json")
    if meta.get("format") != FORMAT:
        raise ScratchLMError(f"{path} is not a scratchlm quality model (meta.json format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise ScratchLMError(f"{path} is quality-model version {meta.get('version')}; this scratchlm reads {VERSION}")
    arrays = load_file(str(path / "model.safetensors"))
    return QualityModel(arrays["E"], arrays["W"], arrays["b"], meta["labels"], meta["ngrams"], meta["max_words"], meta)


# ---------------------------------------------------------------------------------------------- training


def _read_texts(paths: list[str | Path]) -> list[str]:
    from scratchlm.data.readers import read_documents
    from scratchlm.data.stats import StageStats

    texts = []
    for p in paths:
        texts += [d.text for d in read_documents(p, StageStats("read")) if d.text.strip()]
    return texts


def train_quality_model(
    positive_paths: list[str | Path],
    negative_paths: list[str | Path],
    cfg: QualityTrainConfig | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    log=print,
) -> QualityModel:
    """Train on documents read from the given files (any reader format); save to `out` if given."""
    cfg = cfg or QualityTrainConfig()
    cfg.validate()
    pos, neg = _read_texts(positive_paths), _read_texts(negative_paths)
    if len(pos) < 2 or len(neg) < 2:
        raise ScratchLMError(f"need at least 2 documents per class; got {len(pos)} positive, {len(neg)} negative")
    data = [(t, 0) for t in pos] + [(t, 1) for t in neg]
    rng = random.Random(cfg.seed)
    rng.shuffle(data)
    n_valid = int(len(data) * cfg.valid_fraction)
    valid, train = data[:n_valid], data[n_valid:]
    feats = [features(t, cfg.buckets, cfg.ngrams, cfg.max_words) for t, _ in train]
    y = np.array([label for _, label in train], dtype=np.int64)
    t0 = time.perf_counter()
    E, W, b = _fit(feats, y, cfg, log)
    labels = [cfg.positive_label, cfg.negative_label]
    meta = {
        "labels": labels,
        "ngrams": cfg.ngrams,
        "max_words": cfg.max_words,
        "config": cfg.__dict__,
        "train_documents": {"positive": int((y == 0).sum()), "negative": int((y == 1).sum())},
        "train_seconds": round(time.perf_counter() - t0, 3),
        "positive_sources": [str(p) for p in positive_paths],
        "negative_sources": [str(p) for p in negative_paths],
    }
    model = QualityModel(E, W, b, labels, cfg.ngrams, cfg.max_words, meta)
    if valid:
        meta["valid"] = evaluate(model, [t for t, _ in valid], [labels[k] for _, k in valid], cfg.positive_label)
        log(f"validation on {len(valid)} documents: {meta['valid']}")
    if out is not None:
        model.save(out, overwrite=overwrite)
    return model


def _fit(feats: list[np.ndarray], y: np.ndarray, cfg: QualityTrainConfig, log) -> tuple[np.ndarray, ...]:
    import torch

    g = torch.Generator().manual_seed(cfg.seed)
    emb = torch.nn.EmbeddingBag(cfg.buckets, cfg.dim, mode="mean", sparse=True)
    head = torch.nn.Linear(cfg.dim, 2)
    with torch.no_grad():
        emb.weight.uniform_(-1.0 / cfg.dim, 1.0 / cfg.dim, generator=g)  # fastText's input-matrix init
        head.weight.zero_()  # fastText starts the output matrix at zero
        head.bias.zero_()
    opt_e = torch.optim.SparseAdam(list(emb.parameters()), lr=cfg.lr)
    opt_h = torch.optim.Adam(list(head.parameters()), lr=cfg.lr)
    counts = np.bincount(y, minlength=2).astype(np.float64)
    weight = torch.tensor(len(y) / (2 * np.maximum(counts, 1)), dtype=torch.float32) if cfg.balance else None
    order = np.arange(len(y))
    rng = np.random.default_rng(cfg.seed)
    for epoch in range(cfg.epochs):
        rng.shuffle(order)
        total = 0.0
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            ids = torch.from_numpy(np.concatenate([feats[i] for i in idx]))
            offsets = torch.from_numpy(np.cumsum([0] + [feats[i].size for i in idx[:-1]]))
            logits = head(emb(ids, offsets))  # (batch, 2)
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y[idx]), weight=weight)
            opt_e.zero_grad()
            opt_h.zero_grad()
            loss.backward()
            opt_e.step()
            opt_h.step()
            total += loss.item() * len(idx)
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {total / len(order):.4f}")
    return (
        emb.weight.detach().numpy().astype(np.float32),
        head.weight.detach().numpy().astype(np.float32),
        head.bias.detach().numpy().astype(np.float32),
    )


def evaluate(model: QualityModel, texts: list[str], labels: list[str], positive: str) -> dict:
    pred = [model.predict(t)[0] for t in texts]
    tp = sum(p == positive and t == positive for p, t in zip(pred, labels))
    fp = sum(p == positive and t != positive for p, t in zip(pred, labels))
    fn = sum(p != positive and t == positive for p, t in zip(pred, labels))
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return {
        "documents": len(texts),
        "accuracy": round(sum(p == t for p, t in zip(pred, labels)) / max(len(texts), 1), 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / max(precision + recall, 1e-12), 4),
    }


# ---------------------------------------------------------------------------------------------- the stage function


def default_model_path() -> str:
    """$SCRATCHLM_QUALITY_MODEL if set, else the toy-sized default model, built at first use from text that ships
    with Python (`default_quality.py`: what it was trained on, how good it is, and its limits)."""
    path = os.environ.get(MODEL_ENV)
    if path:
        return path
    from scratchlm.data.default_quality import ensure_default_quality_model

    return str(ensure_default_quality_model())


@cache
def _load_any(path: str):
    if Path(path).suffix in (".bin", ".ftz"):
        from scratchlm.data.fasttext_models import load_fasttext

        return load_fasttext(path)
    return load_quality_model(path)


def classify_quality(text: str, model: str | Path | None = None) -> tuple[str, float]:
    """(label, probability) from a scratchlm quality model directory or a fastText .bin/.ftz classifier."""
    m = _load_any(str(model or default_model_path()))
    if isinstance(m, QualityModel):
        return m.predict(text)
    from scratchlm.data.fasttext_models import predict_fasttext

    return predict_fasttext(m, text)
