"""The engine's cache view against the plain model forward: mixed prefill chunks and decodes of
sequences whose blocks are scattered in the pool (GQA, sliding-window layers, learned positions, MLA
latents), recurrent states in slots continued across right-padded steps; unservable models refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scratchlm.errors import ScratchLMError
from scratchlm.infer.paged_cache import KVPool, check_servable
from scratchlm.infer.sequence import Sequence
from scratchlm.infer.state_slots import StateSlots
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.model.config import MLAConfig, MoEConfig

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
    [
        dict(),
        dict(layer_pattern="SL", window=5),
        dict(positions="learned"),
        dict(qk_norm=True, bias=True),
        dict(attention="mla", mla=MLAConfig(kv_lora_rank=12, rope_head_dim=4)),
        dict(attention="mla", positions="none", mla=MLAConfig(kv_lora_rank=12)),  # no RoPE key: Dr = 0
    ],
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


@pytest.mark.parametrize("changes", [dict(attention="linear", linear_chunk=4), dict(layer_pattern="LM")])
def test_recurrent_states_continue_across_steps(changes):
    """Two sequences in state slots 1 and 0 (slot 0 was first dirtied by another sequence and freed); step 1:
    a prefill chunk and a shorter one; step 2: a decode token and the rest of the longer one. Linear
    attention takes the rows right-padded in one batch; S4D one forward per row (see state_slots.py)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, context_length=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, **changes)
    model = TransformerLM(cfg).eval()
    pool, slots = KVPool(model, num_blocks=16, block_size=BS), StateSlots(model, num_slots=2)
    assert "state" in check_servable(model) and slots.needs_unpadded_rows == ("M" in cfg.layer_pattern)
    a, b = torch.randint(0, 97, (9,)).tolist(), torch.randint(0, 97, (7,)).tolist()
    tables = [[3, 7, 1], [9, 2, -1]]
    seqs, other = [Sequence(a), Sequence(b)], Sequence([1])
    slots.allocate(other)
    for state in slots.pools.values():  # a used slot: allocate must reset it
        for t in vars(state).values():
            if isinstance(t, torch.Tensor):
                t.fill_(3.0)
    slots.free(other)
    assert slots.allocate(seqs[1]) == 1 and slots.allocate(seqs[0]) == 0

    def forward(rows, r):  # rows r of the step in one forward
        ids, pos, sm = batch([rows[i] for i in r], [tables[i] for i in r])
        ctx = torch.tensor([rows[i][1] + len(rows[i][0]) for i in r])
        step = pool.step(sm, torch.tensor([tables[i] for i in r]), ctx, slots.step([seqs[i] for i in r]))
        return model(ids, cache=step, positions=pos)

    with torch.no_grad():
        refs = [model(torch.tensor([a]))[0], model(torch.tensor([b]))[0]]
        for rows in [[(a[:6], 0), (b[:2], 0)], [(a[6:7], 6), (b[2:], 2)]]:
            outs = (
                [forward(rows, [0])[0], forward(rows, [1])[0]] if slots.needs_unpadded_rows else forward(rows, [0, 1])
            )
            for (toks, start), out, ref in zip(rows, outs, refs):
                assert (out[: len(toks)] - ref[start : start + len(toks)]).abs().max() < 1e-5


def test_state_slots_bookkeeping():
    model = TransformerLM(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, layer_pattern="LM"))
    slots = StateSlots(model, num_slots=2)
    assert list(slots.pools) == [1]  # the S4D layer; layer 0 is paged
    s1, s2, s3 = Sequence([1]), Sequence([2]), Sequence([3])
    slots.allocate(s1), slots.allocate(s2)
    with pytest.raises(ScratchLMError, match="no free state slot"):
        slots.allocate(s3)
    with pytest.raises(ScratchLMError, match="already holds"):
        slots.allocate(s1)
    slots.free(s1), slots.free(s1), slots.free(s3)  # idempotent; s3 holds none
    assert slots.num_free_slots == 1 and slots.allocate(s3) == slots.slot(s3)
    with pytest.raises(ScratchLMError, match="recurrent layers"):
        KVPool(model, 4, BS).step(
            torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, dtype=torch.long)
        )


class _Mystery(nn.Module):
    def forward(self, x, ctx):
        return x


def test_unservable_models_are_refused():
    model = TransformerLM(ModelConfig(vocab_size=50, d_model=32, n_layers=3, n_heads=4))
    model.blocks["1"].attn.f = _Mystery()  # a mixer the engine has no cache for
    with pytest.raises(ScratchLMError, match=r"_Mystery \(layers 1\)"):
        KVPool(model, 8, 4)
    moe = ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4, moe=MoEConfig(num_experts=4, capacity_factor=1))
    model = TransformerLM(moe)
    with pytest.raises(ScratchLMError, match="capacity_factor"):
        KVPool(model, 8, 4)
    model.config.moe.capacity_factor = 0.0  # dropless: servable
    KVPool(model, 8, 4)
