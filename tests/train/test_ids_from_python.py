"""Ids made in Python: `write_token_file` writes what `tokenizer encode` writes, and `TokenData` takes the ids
in memory; training on either follows the trajectory of training on the encoded file (issue 12)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scratchlm.config import load_config
from scratchlm.errors import ScratchLMError
from scratchlm.tokenizer import load_tokenizer, write_token_file
from scratchlm.tokenizer.token_file import open_tokens, sidecar_path
from scratchlm.train.config import TrainConfig
from scratchlm.train.data import RandomWindows, TokenData, eval_windows
from scratchlm.train.loop import train

# Every field `tokenizer encode` writes that does not depend on the corpus file itself.
SHARED_FIELDS = (
    "format version dtype count vocab_size tokenizer_hash tokenizer doc_separator doc_separator_id documents "
    "source_bytes bytes_per_token"
).split()


def cfg_for(tiny_data, tmp_path, name, train_file="", valid_file="") -> TrainConfig:
    base = {
        "out_dir": str(tmp_path / name),
        "data": {"train": str(train_file), "valid": str(valid_file), "tokenizer": str(tiny_data["tokenizer"])},
        "model": {"vocab_size": tiny_data["vocab_size"]},
    }
    return load_config(TrainConfig, "train", "debug", ["steps=6", "log_every=1", "eval_every=3"], base=base)


def losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r.get("loss", r.get("val_loss")) for r in map(json.loads, lines) if r["kind"] in ("train", "eval")]


def test_write_token_file_round_trips_through_training(tiny_data, tmp_path):
    ids, encoded = open_tokens(tiny_data["train"])
    valid_ids, _ = open_tokens(tiny_data["valid"])
    out = tmp_path / "train.bin"
    meta = write_token_file(ids.astype(np.int64), out, tokenizer=tiny_data["tokenizer"])  # a path: recorded
    assert out.read_bytes() == tiny_data["train"].read_bytes()
    assert {k: meta[k] for k in SHARED_FIELDS} == {k: encoded[k] for k in SHARED_FIELDS}
    assert json.loads(sidecar_path(out).read_text()) == meta
    write_token_file(
        torch.from_numpy(valid_ids.astype(np.int64)), tmp_path / "valid.bin", load_tokenizer(tiny_data["tokenizer"])
    )

    data = TokenData(out, expect_tokenizer_hash=encoded["tokenizer_hash"])
    data.check_vocab(tiny_data["vocab_size"])
    x, y = RandomWindows(data, 4, 16, seed=1).batch(3)
    x0, y0 = RandomWindows(TokenData(tiny_data["train"]), 4, 16, seed=1).batch(3)
    assert torch.equal(x, x0) and torch.equal(y, y0)

    train(cfg_for(tiny_data, tmp_path, "encoded", tiny_data["train"], tiny_data["valid"]), progress=False)
    train(cfg_for(tiny_data, tmp_path, "written", out, tmp_path / "valid.bin"), progress=False)
    assert losses(tmp_path / "written") == losses(tmp_path / "encoded")


def test_write_token_file_with_a_vocab_size_only(tmp_path):
    meta = write_token_file([0, 5, 65_535], tmp_path / "a.bin", vocab_size=65_536)
    assert meta["dtype"] == "uint16" and meta["tokenizer_hash"] is None and meta["bytes_per_token"] is None
    meta = write_token_file(np.array([70_000, 1], dtype=np.uint64), tmp_path / "b.bin", vocab_size=70_001)
    ids, _ = open_tokens(tmp_path / "b.bin")
    assert meta["dtype"] == "uint32" and ids.tolist() == [70_000, 1]
    empty = write_token_file([], tmp_path / "c.bin", vocab_size=10)
    assert empty["count"] == 0 and open_tokens(tmp_path / "c.bin")[0].size == 0
    d = TokenData(tmp_path / "a.bin")
    assert d.vocab_size == 65_536 and d.max_id() == 65_535
    with pytest.raises(ScratchLMError, match="bytes_per_token"):
        d.bytes_per_token  # noqa: B018 - no tokenizer given: bits per byte cannot be known


@pytest.mark.parametrize(
    "ids, kwargs, message",
    [
        ([1, 2, 10], {"vocab_size": 10}, r"id 10 \(at position 2\), outside the vocabulary \[0, 10\)"),
        (np.array([3, -1]), {"vocab_size": 10}, "id -1"),
        (np.array([1.0, 2.0]), {"vocab_size": 10}, "must be integers, got dtype float64"),
        ([True, False], {"vocab_size": 10}, "must be integers"),
        (np.zeros((2, 3), dtype=np.int64), {"vocab_size": 10}, r"one flat sequence.*shape \(2, 3\)"),
        ([1, "a"], {"vocab_size": 10}, "must be integers"),
        ([1, 2**70], {"vocab_size": 10}, "must be integers, got dtype object"),
        ([1, 2], {}, "needs tokenizer= .* or vocab_size="),
        ([1, 2], {"vocab_size": 0}, "vocab_size must be a positive integer"),
        ([1, 2], {"tokenizer": 5}, "must be a scratchlm Tokenizer or its path"),
        ([1, 2], {"vocab_size": 10, "chunk": 0}, "chunk must be >= 1"),
    ],
)
def test_write_token_file_bad_input_is_one_line_and_writes_nothing(tmp_path, ids, kwargs, message):
    with pytest.raises(ScratchLMError, match=message) as e:
        write_token_file(ids, tmp_path / "t.bin", **kwargs)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_write_token_file_keeps_an_existing_file_unless_overwrite(tmp_path):
    path = tmp_path / "t.bin"
    write_token_file([1, 2, 3], path, vocab_size=10)
    before = path.read_bytes(), sidecar_path(path).read_text()
    with pytest.raises(ScratchLMError, match="already exists"):
        write_token_file([4, 5], path, vocab_size=10)
    with pytest.raises(ScratchLMError, match="id 11"):
        write_token_file([4, 11], path, vocab_size=10, overwrite=True)
    assert (path.read_bytes(), sidecar_path(path).read_text()) == before
    write_token_file([4, 5], path, vocab_size=10, overwrite=True)
    assert open_tokens(path)[0].tolist() == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin", "t.bin.json"]  # no temp files left
    with pytest.raises(ScratchLMError, match="is a directory"):
        write_token_file([1], tmp_path, vocab_size=10, overwrite=True)
    with pytest.raises(ScratchLMError, match="another tokenizer"):
        TokenData(path, expect_tokenizer_hash="0" * 64)
    with pytest.raises(ScratchLMError, match="tokenizer_hash"):
        TokenData(path, tokenizer_hash="x")  # in-memory settings with a file


def test_in_memory_ids_train_like_the_token_file(tiny_data, tmp_path):
    ids, meta = open_tokens(tiny_data["train"])
    valid_ids, valid_meta = open_tokens(tiny_data["valid"])
    common = {"vocab_size": meta["vocab_size"], "tokenizer_hash": meta["tokenizer_hash"]}
    as_tensor = TokenData(torch.from_numpy(ids.astype(np.int64)), **common, bytes_per_token=meta["bytes_per_token"])
    as_list = TokenData(ids.tolist(), vocab_size=meta["vocab_size"])
    on_file = TokenData(tiny_data["train"])
    assert len(as_tensor) == len(as_list) == len(on_file) and as_tensor.path is None
    for d in (as_tensor, as_list):
        d.check_vocab(tiny_data["vocab_size"])
        for i in (0, 7):
            got, want = RandomWindows(d, 4, 16, seed=2).batch(i), RandomWindows(on_file, 4, 16, seed=2).batch(i)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            for a, b in zip(eval_windows(d, 3, 32, max_tokens=200), eval_windows(on_file, 3, 32, max_tokens=200))
        )
    valid = TokenData(valid_ids, **common, bytes_per_token=valid_meta["bytes_per_token"])

    train(cfg_for(tiny_data, tmp_path, "encoded", tiny_data["train"], tiny_data["valid"]), progress=False)
    summary = train(cfg_for(tiny_data, tmp_path, "memory"), progress=False, train_data=as_tensor, valid_data=valid)
    assert losses(tmp_path / "memory") == losses(tmp_path / "encoded") and summary["val_bpb"] > 0


@pytest.mark.parametrize(
    "ids, kwargs, message",
    [
        (np.arange(5), {}, "need vocab_size="),
        (np.arange(5), {"vocab_size": 4}, r"id 4 \(at position 4\), outside the vocabulary \[0, 4\)"),
        (torch.tensor([1.5, 2.0]), {"vocab_size": 4}, "must be integers, got dtype float32"),
        (np.arange(5), {"vocab_size": 8, "bytes_per_token": -1.0}, "bytes_per_token must be > 0"),
        (np.arange(5), {"vocab_size": 8, "expect_tokenizer_hash": "abc"}, "another tokenizer"),
    ],
)
def test_in_memory_bad_ids_are_one_line_errors(ids, kwargs, message):
    with pytest.raises(ScratchLMError, match=message) as e:
        TokenData(ids, **kwargs)
    assert "\n" not in str(e.value)


def test_in_memory_data_too_short_or_of_the_wrong_vocab(tiny_data, tmp_path):
    small = TokenData(np.arange(8), vocab_size=8)
    with pytest.raises(ScratchLMError, match="in-memory token data has 8 tokens but one window needs"):
        RandomWindows(small, 2, 16, seed=0)
    with pytest.raises(ScratchLMError, match="set model.vocab_size >= 8"):
        small.check_vocab(4)
    other = TokenData(np.arange(40), vocab_size=tiny_data["vocab_size"], tokenizer_hash="other")
    with pytest.raises(ScratchLMError, match="another tokenizer"):
        train(cfg_for(tiny_data, tmp_path, "mixed", tiny_data["train"]), progress=False, valid_data=other)
