"""The engine serves every mixer kind: MLA (latent in blocks), linear attention and S4D (a state slot per
sequence), and hybrids. For random request mixes, with chunked prefill forced by a tiny token budget and
preemption forced by a tiny block pool and fewer sequence slots than requests: greedy tokens equal
`generate()` on each request alone, logprobs equal the training forward within 1e-5, and no block or
state slot is left taken."""

from __future__ import annotations

import random

import pytest
import torch

from scratchlm.infer.engine import LLM
from scratchlm.infer.sampling import SamplingParams
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.model.config import MLAConfig, SSMConfig
from scratchlm.model.generate import generate

V = 61
# dt up to 0.5: the S4D state turns and decays fast, so a state one token too old shows in the logprobs
SSM = SSMConfig(state_dim=8, dt_min=0.05, dt_max=0.5)
MLA = MLAConfig(kv_lora_rank=16, rope_head_dim=4, q_lora_rank=8)

MODELS = {
    "mla": dict(attention="mla", mla=MLA),
    "mla without rope": dict(attention="mla", positions="none", mla=MLAConfig(kv_lora_rank=16)),
    "linear": dict(attention="linear", linear_chunk=4),
    "s4d": dict(layer_pattern="M", ssm=SSM),
    "s4d + sliding + full": dict(layer_pattern="MSL", window=6, ssm=SSM),
    "s4d + mla": dict(layer_pattern="MML", attention="mla", mla=MLA, ssm=SSM),
    "s4d + linear": dict(layer_pattern="ML", attention="linear", linear_chunk=4, ssm=SSM),
}

SCHEDULES = {
    "chunked prefill": dict(num_blocks=64, block_size=4, max_num_batched_tokens=7),
    "preemption": dict(num_blocks=10, block_size=4, max_num_seqs=3, max_num_batched_tokens=20),
}


def build(changes: dict) -> TransformerLM:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, context_length=96, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, **changes)
    return TransformerLM(cfg).eval()


def mix(seed: int, n: int = 8) -> list[list[int]]:
    """Prompts of 1-30 tokens; some share a 12-token prefix, one is duplicated."""
    rng = random.Random(seed)
    shared = [rng.randrange(V) for _ in range(12)]
    prompts = []
    for i in range(n):
        tail = [rng.randrange(V) for _ in range(rng.randint(1, 18))]
        prompts.append(shared + tail if i % 3 == 0 else tail + [rng.randrange(V) for _ in range(rng.randint(0, 12))])
    prompts.append(list(prompts[0]))
    return prompts


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return build(MODELS[request.param])


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_greedy_and_logprobs_equal_the_model_alone(model, schedule):
    llm = LLM(model, **SCHEDULES[schedule])
    prompts = mix(1)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))
    for prompt, out in zip(prompts, outs):
        c = out.outputs[0]
        assert c.token_ids == generate(model, prompt, 10, temperature=0.0)[len(prompt) :]
        assert c.finish_reason == "length"
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt + c.token_ids]))[0].float(), dim=-1)  # (T, V)
        want = logp[len(prompt) - 1 : -1].gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
        assert (torch.tensor(c.logprobs) - want).abs().max() < 1e-5
    engine = llm.engine
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks  # no block leaked
    slots = engine.runner.slots
    if slots is not None:
        assert slots.num_free_slots == slots.num_slots  # no state slot leaked
    if schedule == "preemption":
        assert engine.stats["preemptions"] > 0
    else:
        assert engine.stats["steps"] > 2 * 10  # prompts went in several chunks


def test_recurrent_models_do_not_use_the_prefix_cache():
    """A prefix hit skips computing tokens, but their recurrent state is not in the blocks."""
    for name, want in (("s4d + mla", False), ("linear", False), ("mla", True)):
        llm = LLM(build(MODELS[name]), num_blocks=64, block_size=4)
        prompt = list(range(1, 21))
        llm.generate([prompt, prompt], SamplingParams(temperature=0.0, max_tokens=2))
        llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=2))
        blocks = llm.engine.blocks
        assert blocks.enable_prefix_caching is want and (blocks.hit_tokens > 0) is want, name


def test_abort_frees_the_state_slot():
    llm = LLM(build(MODELS["s4d + linear"]), num_blocks=64, block_size=4, max_num_seqs=2)
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    running = [engine.add_request([1, 2, 3], params), engine.add_request([4, 5], params)]
    waiting = engine.add_request([6, 7, 8], params)
    engine.step()
    assert engine.runner.slots.num_free_slots == 0
    engine.abort(waiting)  # never admitted: held no slot
    engine.abort(running[0])
    assert engine.runner.slots.num_free_slots == 1
    while engine.has_unfinished():
        engine.step()
    assert engine.runner.slots.num_free_slots == 2 and engine.blocks.num_free_blocks == 64


def test_pool_size_from_megabytes():
    """Without num_blocks, the pool holds kv_cache_mb of MLA latents; a model of recurrent layers only needs no
    block memory, and gets enough blocks for max_num_seqs sequences at full length."""
    mla = LLM(build(MODELS["mla"]), kv_cache_mb=1, block_size=4).engine
    per_block = 3 * 4 * (16 + 4) * 4  # layers * block_size * (R + Dr) * fp32
    assert mla.blocks.num_blocks == 2**20 // per_block
    assert mla.runner.pool.nbytes() == mla.blocks.num_blocks * per_block
    s4d = LLM(build(MODELS["s4d"]), kv_cache_mb=1, block_size=4, max_num_seqs=5).engine
    assert s4d.blocks.num_blocks == 5 * 96 // 4 and s4d.runner.pool.nbytes() == 0
