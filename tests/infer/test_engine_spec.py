"""Speculative decoding inside the batched engine (spec_decode.py): greedy outputs equal each request's
`generate()` alone whatever the proposer, k, block pool or token budget; logprobs equal the plain engine's;
sampled outputs follow the target's distribution (chi-square over seeded requests in one batch); no block
leaks; per-request fallbacks and refusals."""

from __future__ import annotations

import pytest
import torch

from scratchlm.errors import InvalidArgument
from scratchlm.infer.engine import LLM
from scratchlm.infer.sampling import SamplingParams
from scratchlm.infer.spec_decode import SpeculativeConfig
from scratchlm.infer.speculative import processed_probs
from tests.infer.test_speculative import SMALL_V, assert_chi_square, target_joint, tiny

V = 64
GREEDY = SamplingParams(temperature=0.0, max_tokens=14, ignore_eos=True)


def prompts() -> list[list[int]]:
    rep = [7, 8, 9, 10, 11, 12] * 3  # prompt lookup finds matches here
    return [rep, [3, 17, 42, 5, 9], rep[:9] + [1, 2], [5] * 12, [3, 17, 42, 5, 9]]


def reference(model, prompt, n):
    from scratchlm.model.generate import generate

    return generate(model, prompt, n, temperature=0.0)[len(prompt) :]


CONFIGS = {
    "ngram k=1": (dict(method="ngram", num_tokens=1), {}),
    "ngram k=4": (dict(method="ngram", num_tokens=4), {}),
    "draft k=3": (dict(method="draft", num_tokens=3), {}),
    "self-draft k=6, tiny pool (preemption)": (dict(method="draft", num_tokens=6), dict(num_blocks=13, max_num_seqs=5)),
    "ngram k=5, tiny budget (trimmed proposals)": (dict(method="ngram", num_tokens=5), dict(max_num_batched_tokens=9)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_equals_generate_alone(name):
    spec, engine_kw = CONFIGS[name]
    target = tiny(0)
    draft = target if "self-draft" in name else tiny(1, d_model=16, n_layers=1)  # self: every proposal accepted
    kw = dict(num_blocks=64, block_size=4) | engine_kw
    llm = LLM(
        target, draft_model=draft if spec["method"] == "draft" else None, speculative=SpeculativeConfig(**spec), **kw
    )
    outs = llm.generate(prompts(), GREEDY)
    for p, out in zip(prompts(), outs):
        assert out.outputs[0].token_ids == reference(target, p, 14), name
        assert out.outputs[0].finish_reason == "length"
    stats, blocks = llm.engine.stats, llm.engine.blocks
    assert blocks.num_free_blocks == blocks.num_blocks  # nothing leaked (dropped and rejected proposals included)
    assert 0 <= stats["spec_accepted"] <= stats["spec_proposed"] and stats["spec_proposed"] > 0
    if "ngram" in name or "self" in name:  # repetitive prompts / the target itself: some proposals accepted
        assert stats["spec_accepted"] > 0
    if "preemption" in name:
        assert stats["preemptions"] > 0


def test_the_target_as_its_own_draft_accepts_everything_and_logprobs_match_the_plain_engine():
    target = tiny(0)
    params = SamplingParams(temperature=0.0, max_tokens=13, ignore_eos=True, logprobs=3)
    plain = LLM(target, num_blocks=64, block_size=4).generate(prompts(), params)
    llm = LLM(target, draft_model=target, speculative=SpeculativeConfig("draft", 4), num_blocks=64, block_size=4)
    spec = llm.generate(prompts(), params)
    for a, b in zip(plain, spec):
        ca, cb = a.outputs[0], b.outputs[0]
        assert ca.token_ids == cb.token_ids
        torch.testing.assert_close(torch.tensor(cb.logprobs), torch.tensor(ca.logprobs), atol=1e-5, rtol=0)
        assert [[i for i, _ in row] for row in cb.top_logprobs] == [[i for i, _ in row] for row in ca.top_logprobs]
    stats = llm.engine.stats
    assert stats["spec_accepted"] == stats["spec_proposed"] > 0  # the target agrees with itself
    # 13 tokens: 1 from the prefill step, then rounds of 4 accepted + 1 = 5 tokens: 3 more steps per request
    assert stats["steps"] <= 1 + 3 * len(prompts())


def test_stop_ids_and_max_tokens_inside_a_round():
    target = tiny(0)
    ref = reference(target, prompts()[1], 20)
    stop = ref[6]
    params = SamplingParams(temperature=0.0, max_tokens=20, stop_token_ids=[stop])
    llm = LLM(target, draft_model=target, speculative=SpeculativeConfig("draft", 5), num_blocks=64, block_size=4)
    out = llm.generate([prompts()[1]], params)[0].outputs[0]
    assert out.token_ids == ref[: ref.index(stop) + 1] and out.finish_reason == "stop"
    out = llm.generate([prompts()[1]], SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True))[0].outputs[0]
    assert out.token_ids == ref[:7] and out.finish_reason == "length"
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_blocks


def second_and_third_joint(target, prompt, params) -> torch.Tensor:
    """(V * V,) exact probability of the 2nd and 3rd generated tokens: sum over the 1st of p(t1) p(t2, t3 | t1)."""
    with torch.no_grad():
        p1 = processed_probs(target(torch.tensor([prompt]))[0, -1], params).double()
    return sum(p1[t] * target_joint(target, prompt + [t], params) for t in range(SMALL_V) if p1[t] > 0)


def test_sampled_tokens_follow_the_target():
    """800 requests with seeds 0..799 in one engine batch. The 1st token comes from the prefill step; then
    k = 2 draft proposals cover the 2nd and 3rd: chi-square of that pair against the exact target joint."""
    target = tiny(0, vocab=SMALL_V, d_model=16, n_layers=1, init_std=0.5)
    draft = tiny(7, vocab=SMALL_V, d_model=16, n_layers=1, init_std=1.5)  # a very different model
    params = [SamplingParams(temperature=1.0, top_k=4, seed=s, max_tokens=4, ignore_eos=True) for s in range(800)]
    prompt = [0, 1, 2, 0, 1]
    joint = second_and_third_joint(target, prompt, params[0])
    llm = LLM(target, draft_model=draft, speculative=SpeculativeConfig("draft", 2), num_blocks=2048, block_size=4,
              max_num_seqs=256)  # fmt: skip
    outs = llm.generate([prompt] * len(params), params)
    counts = torch.zeros(SMALL_V * SMALL_V, dtype=torch.float64)
    for o in outs:
        _, a, b, _ = o.outputs[0].token_ids
        counts[a * SMALL_V + b] += 1
    stats = llm.engine.stats
    assert 0 < stats["spec_accepted"] < stats["spec_proposed"]  # both branches of the rule were taken
    assert_chi_square(counts, joint, len(params))


def test_penalised_requests_decode_without_speculation():
    target = tiny(0)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, repetition_penalty=1.3)
    plain = LLM(target, num_blocks=64, block_size=4).generate(prompts()[:2], params)
    llm = LLM(target, draft_model=target, speculative=SpeculativeConfig("draft", 4), num_blocks=64, block_size=4)
    spec = llm.generate(prompts()[:2], params)
    assert [o.outputs[0].token_ids for o in spec] == [o.outputs[0].token_ids for o in plain]
    assert llm.engine.stats["spec_proposed"] == 0


def test_bad_configurations_are_clear_errors():
    target = tiny(0)
    with pytest.raises(InvalidArgument, match="speculative method"):
        LLM(target, speculative=SpeculativeConfig("medusa"))
    with pytest.raises(InvalidArgument, match="num_tokens"):
        LLM(target, speculative=SpeculativeConfig("ngram", 0))
    with pytest.raises(InvalidArgument, match="needs a draft_model"):
        LLM(target, speculative=SpeculativeConfig("draft"))
    with pytest.raises(InvalidArgument, match="vocabulary"):
        LLM(target, draft_model=tiny(1, vocab=V + 1), speculative=SpeculativeConfig("draft"))
    with pytest.raises(InvalidArgument, match="speculative decoding is off"):
        LLM(target, draft_model=tiny(1))
    recurrent = tiny(0, layer_pattern="LM")  # an S4D layer: its state cannot forget a token
    with pytest.raises(InvalidArgument, match="recurrent layers"):
        LLM(recurrent, speculative=SpeculativeConfig("ngram"))
