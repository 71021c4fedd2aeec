"""Batched generation of prompts of different lengths (left-padded, per-row positions) gives, row for
row, what unbatched generation gives, for every mixer kind; padding never leaks into real tokens."""

from __future__ import annotations

import pytest
import torch

from scratchlm.model import MLAConfig, ModelConfig, SSMConfig, TransformerLM
from scratchlm.model.generate import generate, left_pad

V = 64
PROMPTS = [[3, 17, 42, 5, 9, 11, 2], [8], [30, 1, 4], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]]

# Every mixer kind; the window (4) is shorter than prompts + generated tokens, so the ring wraps.
KINDS = {
    "softmax_full": {},
    "softmax_sliding": {"layer_pattern": "SL", "window": 4},
    "gqa": {"n_kv_heads": 2},
    "mla": {"attention": "mla", "mla": MLAConfig(kv_lora_rank=12, q_lora_rank=10, rope_head_dim=4)},
    "linear": {"attention": "linear", "linear_chunk": 3, "n_kv_heads": 2},
    "s4d": {"layer_pattern": "M", "ssm": SSMConfig(state_dim=8)},
    "hybrid_ssm_gqa": {"layer_pattern": "LM", "n_kv_heads": 2},
    "learned_positions": {"positions": "learned"},
    "moe": {"moe": {"num_experts": 4, "top_k": 2}},
}


def make(**kw) -> TransformerLM:
    base = dict(vocab_size=V, context_length=48, d_model=32, n_layers=2, n_heads=4, init_std=0.3, tie_embeddings=False)
    cfg = ModelConfig(**(base | kw))
    if isinstance(cfg.moe, dict):
        from scratchlm.model.config import MoEConfig

        cfg.moe = MoEConfig(**cfg.moe)
    torch.manual_seed(0)
    return TransformerLM(cfg).double().eval()  # fp64: row-for-row equality is not at the mercy of rounding


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_greedy_equals_unbatched(kind, use_cache):
    m = make(**KINDS[kind])
    batched = generate(m, PROMPTS, 12, temperature=0, use_cache=use_cache)
    for prompt, row in zip(PROMPTS, batched, strict=True):
        alone = generate(m, prompt, 12, temperature=0, use_cache=use_cache)
        assert row == alone, f"{kind}: row of prompt {prompt} differs from its unbatched generation"


@pytest.mark.parametrize("kind", ["softmax_full", "softmax_sliding", "mla", "linear", "s4d"])
def test_padded_logits_equal_unpadded(kind):
    """The logits of a left-padded row at its real tokens equal those of the row alone (prefill)."""
    m = make(**KINDS[kind])
    ids, positions = left_pad(PROMPTS)
    logits = m(ids, positions=positions)  # (B, T, V)
    T = ids.shape[1]
    for b, p in enumerate(PROMPTS):
        alone = m(torch.tensor([p]))[0]
        tol = 1e-5 if kind == "linear" else 1e-9  # linear attention sums in fp32; the chunks fall elsewhere
        torch.testing.assert_close(logits[b, T - len(p) :], alone, rtol=tol, atol=tol)


def test_stop_tokens_end_each_row_on_its_own():
    m = make()
    rows = generate(m, PROMPTS, 10, temperature=0)
    stop = rows[0][len(PROMPTS[0])]  # the first token row 0 generates
    stopped = generate(m, PROMPTS, 10, temperature=0, stop_tokens=[stop])
    assert stopped[0] == PROMPTS[0] + [stop]
    for p, full, s in zip(PROMPTS, rows, stopped, strict=True):
        new = full[len(p) :]
        want = p + (new[: new.index(stop) + 1] if stop in new else new)
        assert s == want


def test_empty_prompt_in_a_batch_is_refused():
    with pytest.raises(ValueError, match="at least one token"):
        generate(make(), [[1, 2], []], 3)
