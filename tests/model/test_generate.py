"""generate(): cached == uncached for every mixer, sampling filters, seeds, stop tokens, length limits."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from scratchlm.model import MLAConfig, ModelConfig, TransformerLM
from scratchlm.model.generate import generate, sample_next, top_k_filter, top_p_filter

V = 64
PROMPT = [3, 17, 42, 5, 9]
HAS_SSM = importlib.util.find_spec("scratchlm.model.ssm") is not None

# Every attention variant; the window (4) is shorter than the 20 generated tokens so the rolling
# KV cache wraps around.
VARIANTS = {
    "mha": {},
    "gqa": {"n_kv_heads": 2},
    "mqa": {"n_kv_heads": 1},
    "sliding_window": {"layer_pattern": "SL", "window": 4, "n_kv_heads": 2},
    "mla": {"attention": "mla", "mla": MLAConfig(kv_lora_rank=12, q_lora_rank=10, rope_head_dim=4)},
    "linear": {"attention": "linear", "linear_chunk": 3, "n_kv_heads": 2},
    "hybrid_ssm": {"layer_pattern": "LM"},
}


def tiny(**kw) -> ModelConfig:
    # A large init and an untied head make the greedy continuation vary (with the default 0.02 and a
    # tied head, a tiny model just repeats its last token, which would hide cache bugs).
    base = dict(vocab_size=V, context_length=32, d_model=32, n_layers=2, n_heads=4, init_std=0.3, tie_embeddings=False)
    return ModelConfig(**(base | kw))


def model(cfg: ModelConfig | None = None, seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(cfg or tiny()).eval()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cached_equals_uncached_greedy(name):
    if name == "hybrid_ssm" and not HAS_SSM:
        pytest.skip("scratchlm.model.ssm not available")
    m = model(tiny(**VARIANTS[name]))
    cached = generate(m, PROMPT, 20, temperature=0)
    assert cached == generate(m, PROMPT, 20, temperature=0, use_cache=False)
    assert len(cached) == len(PROMPT) + 20 and cached[: len(PROMPT)] == PROMPT
    assert len(set(cached[len(PROMPT) :])) > 2  # a non-trivial continuation
    batch = torch.tensor([PROMPT, [1, 2, 3, 4, 60]])
    out = generate(m, batch, 12, temperature=0)
    assert out.shape == (2, 5 + 12)
    torch.testing.assert_close(out, generate(m, batch, 12, temperature=0, use_cache=False), rtol=0, atol=0)
    assert out[0].tolist() == cached[:17]  # batching changes nothing


def test_seeded_sampling_is_reproducible():
    m = model()
    a = generate(m, PROMPT, 20, temperature=1.0, top_k=20, top_p=0.9, seed=123)
    assert a == generate(m, PROMPT, 20, temperature=1.0, top_k=20, top_p=0.9, seed=123)
    assert a == generate(m, PROMPT, 20, temperature=1.0, top_k=20, top_p=0.9, seed=123, use_cache=False)
    assert a != generate(m, PROMPT, 20, temperature=1.0, top_k=20, top_p=0.9, seed=124)
    assert a != generate(m, PROMPT, 20, temperature=0)


def test_top_k_one_is_greedy():
    m = model()
    assert generate(m, PROMPT, 15, top_k=1, seed=0) == generate(m, PROMPT, 15, temperature=0)


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.tensor([0.15, 0.5, 0.05, 0.3]).log()  # sorted: 0.5, 0.3, 0.15, 0.05
    kept = {
        p: torch.isfinite(top_p_filter(logits, p)).nonzero().flatten().tolist()
        for p in (0.1, 0.49, 0.51, 0.75, 0.9, 1.0)
    }
    assert kept == {0.1: [1], 0.49: [1], 0.51: [1, 3], 0.75: [1, 3], 0.9: [0, 1, 3], 1.0: [0, 1, 2, 3]}
    torch.testing.assert_close(top_p_filter(logits, 0.75)[[1, 3]], logits[[1, 3]])  # kept logits untouched
    rows = top_p_filter(torch.stack([logits, logits.flip(0)]), 0.75)  # works row by row
    assert torch.isfinite(rows).tolist() == [[False, True, False, True], [True, False, True, False]]


def test_top_k_filter():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.5, 0.3]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[False, True, False, True, False]]
    assert torch.isfinite(top_k_filter(logits, 99)).all()


def test_sampling_stays_inside_the_filters():
    logits = torch.tensor([0.15, 0.5, 0.05, 0.3]).log().expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, None, 0.75, g).tolist()) == {1, 3}
    assert set(sample_next(logits, 1.0, 3, 0.9, g).tolist()) == {0, 1, 3}
    draws = sample_next(logits, 1.0, None, None, g)
    assert set(draws.tolist()) == {0, 1, 2, 3}
    freq = torch.bincount(draws, minlength=4) / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.15, 0.5, 0.05, 0.3]), atol=0.03, rtol=0)


def test_stop_token_ends_generation_and_is_included():
    m = model()
    free = generate(m, PROMPT, 12, temperature=0)
    new = free[len(PROMPT) :]
    stop = new[3]
    end = new.index(stop) + 1
    assert generate(m, PROMPT, 12, temperature=0, stop_tokens=[stop, V + 5]) == PROMPT + new[:end]


def test_batch_rows_finish_independently_and_repeat_their_stop_token():
    m = model()
    prompts = torch.tensor([PROMPT, [1, 2, 3, 4, 60]])
    free = generate(m, prompts, 12, temperature=0)[:, 5:].tolist()
    stops = {free[0][1], free[1][4]}
    firsts = [next(i for i, t in enumerate(row) if t in stops) for row in free]
    out = generate(m, prompts, 12, temperature=0, stop_tokens=stops)
    assert out.shape[1] == 5 + max(firsts) + 1  # generation ends when every row has stopped
    for row, first, got in zip(free, firsts, out[:, 5:].tolist()):
        assert got == row[: first + 1] + [row[first]] * (max(firsts) - first)


def test_length_limits():
    rope = model()
    with pytest.raises(ValueError, match="max_len=32"):
        generate(rope, list(range(30)), 3)  # 30 + 3 > context_length 32
    # RoPE: a longer max_len is allowed, and the cache still matches the reference past the context.
    long = generate(rope, list(range(30)), 10, temperature=0, max_len=40)
    assert len(long) == 40 and long == generate(rope, list(range(30)), 10, temperature=0, max_len=40, use_cache=False)
    learned = model(tiny(positions="learned"))
    with pytest.raises(ValueError, match="learned positions"):
        generate(learned, PROMPT, 3, max_len=40)
    assert len(generate(learned, list(range(30)), 2, temperature=0)) == 32
    with pytest.raises(ValueError, match="at least one token"):
        generate(rope, [], 3)
    with pytest.raises(ValueError, match="top_p"):
        generate(rope, PROMPT, 3, top_p=0.0)


def test_zero_new_tokens_and_output_types():
    m = model()
    assert generate(m, PROMPT, 0) == PROMPT
    out = generate(m, torch.tensor([PROMPT]), 4, temperature=0)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.long and out.shape == (1, 9)


def test_runs_in_eval_mode_and_restores_training_mode():
    m = model(tiny(dropout_embd=0.5, dropout_attn=0.5, dropout_resid=0.5))
    ref = generate(m, PROMPT, 10, temperature=0)  # eval: dropout off
    m.train()
    assert generate(m, PROMPT, 10, temperature=0) == ref  # dropout was switched off while generating
    assert m.training and all(sub.training for sub in m.modules())
