"""Token-file loaders: reproducible random windows per seed/rank/index, exact-coverage eval windows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.io import write_json
from scratchlm.tokenizer import Tokenizer
from scratchlm.tokenizer.encode_corpus import encode_file
from scratchlm.tokenizer.token_file import TOKENS_FORMAT, TOKENS_VERSION, sidecar_path, token_dtype
from scratchlm.train.data import (
    IGNORE_INDEX,
    RandomWindows,
    TokenData,
    bits_per_byte,
    count_targets,
    eval_windows,
    split_for_rank,
)

EOT = "<|endoftext|>"


def write_tokens(path, ids, vocab_size: int, bytes_per_token: float = 4.0) -> TokenData:
    """A token file + sidecar in the format `scratchlm tokenizer encode` writes."""
    dtype = token_dtype(vocab_size)
    np.asarray(ids, dtype=dtype).tofile(path)
    meta = {
        "format": TOKENS_FORMAT,
        "version": TOKENS_VERSION,
        "dtype": dtype.name,
        "count": len(ids),
        "vocab_size": vocab_size,
        "tokenizer_hash": "test",
        "bytes_per_token": bytes_per_token,
    }
    write_json(sidecar_path(path), meta)
    return TokenData(path)


@pytest.fixture
def data(tmp_path) -> TokenData:
    return write_tokens(tmp_path / "train.bin", np.arange(1000) % 997, vocab_size=1000)


def test_token_data_is_memory_mapped(data):
    assert isinstance(data.tokens, np.memmap)  # never read into RAM
    assert len(data) == 1000 and data.vocab_size == 1000 and data.bytes_per_token == 4.0
    assert data.meta["tokenizer_hash"] == "test"


def test_encoded_corpus_loads_with_its_tokenizer(tmp_path):
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], [EOT])  # byte-level, no merges
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(("héllo world " * 20 + EOT) * 10, encoding="utf-8")
    meta = encode_file(tok, corpus, tmp_path / "c.bin", num_workers=1)
    d = TokenData(tmp_path / "c.bin", expect_tokenizer_hash=tok.hash)
    assert len(d) == meta["count"] and d.vocab_size == 257
    assert d.bytes_per_token == pytest.approx(corpus.stat().st_size / meta["count"])
    d.check_vocab(257)
    d.check_vocab(320)  # a padded model vocab is fine
    with pytest.raises(ScratchLMError, match="vocab_size 256"):
        d.check_vocab(256)
    with pytest.raises(ScratchLMError, match="another tokenizer"):
        TokenData(tmp_path / "c.bin", expect_tokenizer_hash="0" * 64)
    x, y = RandomWindows(d, 2, 8, seed=0).batch(0)
    assert int(x.max()) < 257


def test_windows_are_shifted_slices_of_the_file(data):
    loader = RandomWindows(data, batch_size=4, seq_len=16, seed=3)
    x, y = loader.batch(7)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    tokens = np.asarray(data.tokens)
    for row, s in enumerate(loader.starts(7)):
        assert x[row].tolist() == tokens[s : s + 16].tolist()
        assert y[row].tolist() == tokens[s + 1 : s + 17].tolist()


def test_windows_reach_both_ends(tmp_path):
    d = write_tokens(tmp_path / "t.bin", np.arange(10), vocab_size=10)
    loader = RandomWindows(d, batch_size=64, seq_len=8, seed=0)  # starts 0 or 1 only
    starts = np.concatenate([loader.starts(i) for i in range(4)])
    assert set(starts.tolist()) == {0, 1}


def test_determinism_per_seed_and_index(data):
    a = RandomWindows(data, 3, 8, seed=1)
    b = RandomWindows(data, 3, 8, seed=1)
    stream = [next(a) for _ in range(5)] + [a.next()]
    assert a.next_index == 6
    assert torch.equal(b.batch(5)[0], stream[5][0])  # batch i without replaying 0..i-1
    assert torch.equal(b.batch(2)[1], stream[2][1])
    assert not torch.equal(stream[0][0], stream[1][0])
    c = RandomWindows(data, 3, 8, seed=2)
    assert not torch.equal(c.batch(0)[0], stream[0][0])


def test_ranks_differ_and_split_the_global_batch(data):
    single = RandomWindows(data, 6, 8, seed=4)
    ranks = [RandomWindows(data, 2, 8, seed=4, rank=r, world_size=3) for r in range(3)]
    parts = [r.batch(9)[0] for r in ranks]
    assert not torch.equal(parts[0], parts[1]) and not torch.equal(parts[1], parts[2])
    assert torch.equal(torch.cat(parts), single.batch(9)[0])  # DDP over 3 ranks == one process


def test_state_dict_resumes_the_stream(data):
    a = RandomWindows(data, 2, 8, seed=0)
    for _ in range(3):
        next(a)
    state = a.state_dict()
    assert state["next_index"] == 3
    b = RandomWindows(data, 2, 8, seed=0)
    b.load_state_dict(state)
    assert torch.equal(next(b)[0], next(a)[0])
    # Same global batch split differently: still the same stream.
    RandomWindows(data, 1, 8, seed=0, rank=1, world_size=2).load_state_dict(state)
    with pytest.raises(ScratchLMError, match="seed 0 -> 1"):
        RandomWindows(data, 2, 8, seed=1).load_state_dict(state)


def test_errors(tmp_path, data):
    small = write_tokens(tmp_path / "small.bin", np.arange(8), vocab_size=10)
    RandomWindows(small, 1, 7, seed=0)  # exactly one window
    with pytest.raises(ScratchLMError, match="batch larger than the data"):
        RandomWindows(small, 1, 8, seed=0)
    with pytest.raises(ScratchLMError, match="rank 2"):
        RandomWindows(data, 1, 8, seed=0, rank=2, world_size=2)
    with pytest.raises(ScratchLMError, match="set model.vocab_size >= 1000"):
        data.check_vocab(999)
    with open(tmp_path / "small.bin", "r+b") as f:  # truncated: the sidecar no longer matches
        f.truncate(10)
    with pytest.raises(ScratchLMError, match="truncated"):
        TokenData(tmp_path / "small.bin")
    with pytest.raises(ScratchLMError, match="not found"):
        TokenData(tmp_path / "absent.bin")


@pytest.mark.parametrize(
    "n, batch_size, seq_len, max_tokens",
    [(101, 3, 10, 0), (100, 4, 11, 0), (12, 5, 11, 0), (2, 1, 4, 0), (1000, 2, 7, 50), (30, 2, 7, 500)],
)
def test_eval_windows_count_every_target_once(tmp_path, n, batch_size, seq_len, max_tokens):
    d = write_tokens(tmp_path / "v.bin", np.arange(n), vocab_size=1 << 16)  # id = position
    batches = list(eval_windows(d, batch_size, seq_len, max_tokens))
    n_targets = count_targets(d, max_tokens)
    assert n_targets == (min(n - 1, max_tokens) if max_tokens else n - 1)
    assert len(batches) == math.ceil(math.ceil(n_targets / seq_len) / batch_size)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert all(b[0].shape[1] == seq_len and b[0].shape[0] <= batch_size for b in batches)
    valid = y != IGNORE_INDEX
    assert y[valid].tolist() == list(range(1, n_targets + 1))  # each target once, in order
    assert torch.equal(x[valid], y[valid] - 1)  # inputs are the preceding tokens
    assert not valid[:-1].logical_not().any()  # padding only in the last window
    # Across ranks: the same windows as one process, split without overlap.
    for world in (2, 3):
        parts = [list(eval_windows(d, batch_size, seq_len, max_tokens, rank=r, world_size=world)) for r in range(world)]
        ys = torch.cat([b[1] for p in parts for b in p]) if any(parts) else torch.empty(0, seq_len)
        assert torch.equal(ys, y)
    assert [b[1].tolist() for b in eval_windows(d, batch_size, seq_len, max_tokens)] == [b[1].tolist() for b in batches]


def test_eval_windows_errors_eagerly(tmp_path):
    d = write_tokens(tmp_path / "one.bin", [5], vocab_size=10)
    with pytest.raises(ScratchLMError, match="at least 2"):
        eval_windows(d, 2, 4)  # raised at the call, not at the first next()


def test_split_for_rank():
    for n in (0, 1, 7, 10):
        for world in (1, 3, 4):
            shares = [split_for_rank(n, r, world) for r in range(world)]
            assert [i for s in shares for i in s] == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_bits_per_byte():
    n = 1000
    nats = n * 2 * math.log(2)  # 2 bits per token
    assert bits_per_byte(nats, n, bytes_per_token=4.0) == pytest.approx(0.5)
    with pytest.raises(ScratchLMError):
        bits_per_byte(1.0, 0, 4.0)


def test_ids_outside_the_vocabulary_are_found_before_training(tmp_path):
    """A token file whose ids exceed its sidecar's vocabulary is refused up front (issue 12, item 8)."""
    ids = np.arange(100) % 10
    ids[57] = 12  # one damaged id
    d = write_tokens(tmp_path / "bad.bin", ids, vocab_size=10)
    assert d.max_id(chunk=16) == 12
    with pytest.raises(ScratchLMError, match="holds id 12, outside the 10-token vocabulary"):
        d.check_vocab(64)
    write_tokens(tmp_path / "good.bin", np.arange(100) % 10, vocab_size=10).check_vocab(10)


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"dtype": "float32"}, "dtype 'float32' is not one of"),
        ({"dtype": None}, "dtype None is not one of"),
        ({"count": "many"}, "count 'many' is not a number"),
        ({"vocab_size": 100_000}, "does not fit its dtype"),
        ({"tokenizer_hash": 7}, "tokenizer_hash 7 is not a string"),
    ],
)
def test_damaged_sidecars_are_one_line_errors(tmp_path, edit, match):
    """A hand-edited or damaged sidecar (issue 12, item 8) is refused with the field named, not a traceback."""
    import json

    write_tokens(tmp_path / "t.bin", np.arange(20) % 10, vocab_size=10)
    side = sidecar_path(tmp_path / "t.bin")
    side.write_text(json.dumps({**json.loads(side.read_text()), **edit}))
    with pytest.raises(ScratchLMError, match=match):
        TokenData(tmp_path / "t.bin")


def test_null_tokenizer_hash_is_another_tokenizer_not_a_traceback(tmp_path):
    import json

    write_tokens(tmp_path / "t.bin", np.arange(20) % 10, vocab_size=10)
    side = sidecar_path(tmp_path / "t.bin")
    side.write_text(json.dumps({**json.loads(side.read_text()), "tokenizer_hash": None}))
    with pytest.raises(ScratchLMError, match="another tokenizer"):
        TokenData(tmp_path / "t.bin", expect_tokenizer_hash="0" * 64)
