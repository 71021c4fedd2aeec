"""The engine against `generate()` on each request alone: random request mixes (different lengths,
shared prefixes, duplicates), preemption forced by a tiny block pool, chunked prefill forced by a tiny
token budget, prefix caching on and off; logprobs against the training forward; no block leaks."""

from __future__ import annotations

import random

import pytest
import torch

from scratchlm.errors import InvalidArgument
from scratchlm.infer.engine import LLM, Engine, EngineConfig
from scratchlm.infer.sampling import SamplingParams
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.model.generate import generate

V = 61


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=V, context_length=96, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, layer_pattern="SL", window=6
    )
    return TransformerLM(cfg).eval()


def mix(seed: int, n: int = 9) -> list[list[int]]:
    """Prompts of 1-30 tokens; some share a 12-token prefix, one is duplicated."""
    rng = random.Random(seed)
    shared = [rng.randrange(V) for _ in range(12)]
    prompts = []
    for i in range(n):
        tail = [rng.randrange(V) for _ in range(rng.randint(1, 18))]
        prompts.append(shared + tail if i % 3 == 0 else tail + [rng.randrange(V) for _ in range(rng.randint(0, 12))])
    prompts.append(list(prompts[0]))
    return prompts


def reference(model, prompt: list[int], n: int) -> list[int]:
    return generate(model, prompt, n, temperature=0.0)[len(prompt) :]


CONFIGS = {
    "default": dict(num_blocks=64, block_size=4),
    "tiny pool (preemption)": dict(num_blocks=14, block_size=4, max_num_seqs=8),
    "tiny budget (chunked prefill)": dict(num_blocks=64, block_size=4, max_num_batched_tokens=7),
    "no prefix caching": dict(num_blocks=64, block_size=4, enable_prefix_caching=False),
    "block size 1": dict(num_blocks=400, block_size=1, max_num_batched_tokens=16),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_equals_generate_alone(model, name):
    llm = LLM(model, **CONFIGS[name])
    prompts = mix(1)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outs = llm.generate(prompts, params)
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == reference(model, prompt, 12), name
        assert out.outputs[0].finish_reason == "length"
    blocks = llm.engine.blocks
    assert blocks.num_free_blocks == blocks.num_blocks  # nothing leaked
    if "preemption" in name:
        assert llm.engine.stats["preemptions"] > 0
    if "chunked" in name:
        assert llm.engine.stats["steps"] > 2 * 12


def test_logprobs_equal_the_training_forward(model):
    llm = LLM(model, num_blocks=64, block_size=4)
    prompts = mix(2, n=4)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=8, logprobs=3))
    for prompt, out in zip(prompts, outs):
        c = out.outputs[0]
        full = torch.tensor([prompt + c.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(full)[0].float(), dim=-1)  # (T, V)
        want = logp[len(prompt) - 1 : -1].gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
        assert (torch.tensor(c.logprobs) - want).abs().max() < 1e-5
        top_ids, top_lp = zip(*c.top_logprobs[0])
        ref_lp, ref_ids = logp[len(prompt) - 1].topk(3)
        assert list(top_ids) == ref_ids.tolist() and torch.allclose(torch.tensor(top_lp), ref_lp, atol=1e-5)


def test_prefix_caching_reuses_blocks(model):
    engine = Engine(model, config=EngineConfig(num_blocks=64, block_size=4))
    prompt = list(range(1, 21))
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    first = engine.add_request(prompt, params)
    while engine.has_unfinished():
        engine.step()
    second = engine.add_request(prompt, params)
    engine.step()  # admits it: the full blocks of the prompt come from the cache
    seq = engine.requests[second].samples[0].seq
    assert seq.num_cached_tokens >= 16
    while engine.has_unfinished():
        engine.step()
    assert engine.output(first).outputs[0].token_ids == engine.output(second).outputs[0].token_ids
    # usage: the first request computed its prompt, the second found 16 of its 20 tokens (4 full blocks)
    # cached; the count survives the sequence's release, which zeroes seq.num_cached_tokens
    assert engine.release(first).num_cached_tokens == 0
    assert seq.num_cached_tokens == 0 and engine.release(second).num_cached_tokens == 16


def test_seeded_sampling_does_not_depend_on_the_batch(model):
    prompts = mix(3, n=5)
    alone = LLM(model, num_blocks=64, block_size=4).generate(
        [prompts[2]], SamplingParams(temperature=1.0, seed=7, max_tokens=10)
    )
    batch = LLM(model, num_blocks=64, block_size=4, max_num_batched_tokens=9).generate(
        prompts, [SamplingParams(temperature=1.0, seed=s, max_tokens=10) for s in (1, 2, 7, 3, 4, 5)]
    )
    assert alone[0].outputs[0].token_ids == batch[2].outputs[0].token_ids


def test_n_samples_share_the_prompt(model):
    llm = LLM(model, num_blocks=64, block_size=4)
    out = llm.generate([list(range(3, 20))], SamplingParams(temperature=1.0, seed=0, n=3, max_tokens=6))[0]
    assert len(out.outputs) == 3 and len({tuple(c.token_ids) for c in out.outputs}) > 1
    assert out.num_cached_tokens == 0  # the prompt was computed once, for sample 0; the others share it


def test_stops_and_abort(model):
    engine = Engine(model, config=EngineConfig(num_blocks=64, block_size=4))
    greedy = reference(model, [5, 6, 7], 10)
    stop_at = greedy[3]
    rid = engine.add_request([5, 6, 7], SamplingParams(temperature=0.0, max_tokens=10, stop_token_ids=[stop_at]))
    other = engine.add_request(list(range(10)), SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True))
    engine.step()
    engine.abort(other)
    while engine.has_unfinished():
        engine.step()
    c = engine.output(rid).outputs[0]
    assert c.finish_reason == "stop" and c.token_ids[-1] == stop_at and len(c.token_ids) == greedy.index(stop_at) + 1
    assert engine.output(other).outputs[0].finish_reason == "abort"
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_bad_requests(model):
    engine = Engine(model, config=EngineConfig(num_blocks=8, block_size=4))
    with pytest.raises(InvalidArgument):
        engine.add_request([], SamplingParams())
    with pytest.raises(InvalidArgument):
        engine.add_request([V + 3], SamplingParams())
    with pytest.raises(InvalidArgument):
        engine.add_request("text without a tokenizer", SamplingParams())
    with pytest.raises(InvalidArgument):
        engine.add_request(list(range(40)) * 3, SamplingParams())  # longer than the context
    with pytest.raises(InvalidArgument):
        SamplingParams(temperature=-1)
    with pytest.raises(InvalidArgument):
        EngineConfig(block_size=0).validate()


def test_sliding_window_model_releases_blocks(model):
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=V, context_length=96, d_model=32, n_layers=2, n_heads=4, layer_pattern="S", window=5)
    slider = TransformerLM(cfg).eval()
    engine = Engine(slider, config=EngineConfig(num_blocks=40, block_size=4))
    prompt = list(range(1, 30))
    rid = engine.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))
    engine.step()
    seq = engine.requests[rid].samples[0].seq
    assert -1 in seq.block_table  # blocks before the window were given back
    while engine.has_unfinished():
        engine.step()
    assert engine.output(rid).outputs[0].token_ids == reference(slider, prompt, 20)
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_stop_strings_are_not_emitted_and_streams_add_up():
    from scratchlm.tokenizer.chat import ChatTokenizer
    from scratchlm.tokenizer.tokenizer import Tokenizer

    torch.manual_seed(2)
    tok = ChatTokenizer.plain(Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]))
    m = TransformerLM(ModelConfig(vocab_size=257, context_length=96, d_model=32, n_layers=2, n_heads=4)).eval()
    prompt = tok.encode("hello")
    free = (
        LLM(m, tok, num_blocks=64, block_size=4)
        .generate([prompt], SamplingParams(temperature=1.0, seed=3, max_tokens=30, ignore_eos=True))[0]
        .outputs[0]
    )
    text = free.text
    # a 2-character string the free run produces after a few characters (same seed: same tokens up to it)
    stop = next(text[i : i + 2] for i in range(4, len(text) - 1) if "\ufffd" not in text[i : i + 2])
    assert text.find(stop) >= 1 and free.finish_reason == "length"
    engine = Engine(m, tok, EngineConfig(num_blocks=64, block_size=4))
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=30, ignore_eos=True, stop=[stop])
    rid = engine.add_request(prompt, params)
    streamed = ""
    while engine.has_unfinished():
        streamed += "".join(d.text for d in engine.step() if d.request_id == rid)
    c = engine.output(rid).outputs[0]
    assert c.finish_reason == "stop" and c.text == text[: text.find(stop)]
    assert streamed == c.text and stop not in streamed


def test_decode_steps_attend_over_blocks_without_a_gather(model, monkeypatch):
    """Decode steps take the paged path (kernels.paged_attention, tiled on CPU), prefills the gather; same tokens."""
    from scratchlm.infer import paged_cache

    calls = {"paged": 0, "gather": 0}
    real_attention, real_store = paged_cache.paged_attention, paged_cache.PagedStep.store

    def counted_attention(*a, **k):
        calls["paged"] += 1
        return real_attention(*a, **k)

    def counted_store(self, *a, **k):
        calls["gather"] += 1
        return real_store(self, *a, **k)

    monkeypatch.setattr(paged_cache, "paged_attention", counted_attention)
    monkeypatch.setattr(paged_cache.PagedStep, "store", counted_store)
    llm = LLM(model, num_blocks=64, block_size=4)
    prompts = mix(3, n=5)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == reference(model, prompt, 10)
    assert calls["paged"] > 0 and calls["gather"] > 0
