"""The paged KV cache view against the plain model forward: mixed prefill chunks and decodes of
sequences whose blocks are scattered in the pool, GQA, sliding-window layers, learned positions."""

from __future__ import annotations

import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.infer.paged_cache import KVPool
from scratchlm.model import ModelConfig, TransformerLM

BS = 4


def slots(table: list[int], start: int, n: int) -> list[int]:
    return [table[p // BS] * BS + p % BS for p in range(start, start + n)]


def batch(rows, tables):
    """rows: (token ids, first position, ...) per sequence -> ids, positions, slot_mapping (B, T), right-padded."""
    T = max(len(ids) for ids, _ in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    pos = torch.full((len(rows), T), -1)
    sm = torch.full((len(rows), T), -1)
    for r, ((toks, start), table) in enumerate(zip(rows, tables)):
        n = len(toks)
        ids[r, :n] = torch.as_tensor(toks)
        pos[r, :n] = torch.arange(start, start + n)
        sm[r, :n] = torch.tensor(slots(table, start, n))
    return ids, pos, sm


@pytest.mark.parametrize(
    "changes",
    [dict(), dict(layer_pattern="SL", window=5), dict(positions="learned"), dict(qk_norm=True, bias=True)],
)
def test_chunked_prefill_and_decode_equal_the_plain_forward(changes):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, context_length=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, **changes)
    model = TransformerLM(cfg).eval()
    pool = KVPool(model, num_blocks=16, block_size=BS)
    a, b = torch.randint(0, 97, (12,)).tolist(), torch.randint(0, 97, (7,)).tolist()
    ta, tb = [3, 7, 1, 12], [9, 2]
    tables = torch.tensor([ta, tb + [-1, -1]])
    with torch.no_grad():
        ref_a, ref_b = model(torch.tensor([a]))[0], model(torch.tensor([b]))[0]
        # step 1: all of a but its last token; the first 3 tokens of b (a chunk)
        ids, pos, sm = batch([(a[:11], 0), (b[:3], 0)], [ta, tb])
        out = model(ids, cache=pool.step(sm, tables, torch.tensor([11, 3])), positions=pos)
        assert (out[0, :11] - ref_a[:11]).abs().max() < 1e-5
        assert (out[1, :3] - ref_b[:3]).abs().max() < 1e-5
        # step 2: a's last token (a decode) and the rest of b
        ids, pos, sm = batch([(a[11:], 11), (b[3:], 3)], [ta, tb])
        out = model(ids, cache=pool.step(sm, tables, torch.tensor([12, 7])), positions=pos)
        assert (out[0, 0] - ref_a[11]).abs().max() < 1e-5
        assert (out[1, :4] - ref_b[3:]).abs().max() < 1e-5


def test_unservable_mixers_are_refused():
    model = TransformerLM(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, layer_pattern="LM"))
    with pytest.raises(ScratchLMError, match="S4DMixer"):
        KVPool(model, 8, 4)
