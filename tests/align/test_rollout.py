"""Rollouts through the engine: the engine's log-probs of the sampled tokens equal the trainer's forward on the
same sequences (the classic silent RL bug when they do not), and updated weights are what the next rollout sees."""

import pytest
import torch

from scratchlm.align.logprobs import response_log_probs
from scratchlm.align.rollout import RolloutSampler, engine_log_probs_tensor, rollout_batch
from scratchlm.errors import ScratchLMError
from scratchlm.model.config import ModelConfig
from scratchlm.model.transformer import TransformerLM


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=48, context_length=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    return TransformerLM(cfg).eval()


def test_rollout_batch_layout():
    b = rollout_batch([[1, 2], [3]], [[4, 5], [6, 7, 8]], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 4], [3, 6, 7]]
    assert b["labels"].tolist() == [[2, 4, 5], [6, 7, 8]]
    assert b["response_mask"].tolist() == [[False, True, True], [True, True, True]]
    with pytest.raises(ScratchLMError):
        rollout_batch([[1]], [])


def test_engine_log_probs_equal_trainer_forward_and_see_updated_weights():
    model = tiny()
    sampler = RolloutSampler(model, num_blocks=64, block_size=4, max_num_seqs=8)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11, 12]]
    ro = sampler.sample(prompts, group_size=3, max_tokens=7, temperature=1.0, seed=0)
    assert len(ro.response_ids) == 6 and ro.prompt_ids[3] == prompts[1]
    assert all(len(r) == len(lp) > 0 for r, lp in zip(ro.response_ids, ro.log_probs))
    batch = rollout_batch(ro.prompt_ids, ro.response_ids)
    with torch.no_grad():
        lp = response_log_probs(model, batch["input_ids"], batch["labels"])["log_probs"]
    engine = engine_log_probs_tensor(ro, lp.shape)
    mask = batch["response_mask"]
    err = (lp - engine).abs()[mask].max().item()
    assert err < 1e-4, f"engine vs trainer log-probs differ by {err}"

    # an in-place weight update (an optimizer step) is what the next rollout samples from: same seeds, and the
    # prompt blocks cached by the first rollout are dropped, so the log-probs are the new model's
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    ro2 = sampler.sample(prompts, group_size=3, max_tokens=7, temperature=1.0, seed=0)
    batch2 = rollout_batch(ro2.prompt_ids, ro2.response_ids)
    with torch.no_grad():
        lp2 = response_log_probs(model, batch2["input_ids"], batch2["labels"])["log_probs"]
    err2 = (lp2 - engine_log_probs_tensor(ro2, lp2.shape)).abs()[batch2["response_mask"]].max().item()
    assert err2 < 1e-4, f"after the update the engine's log-probs are stale by {err2}"
    assert model.training is False


def test_reset_prefix_cache_refuses_while_running():
    from scratchlm.infer.engine import LLM
    from scratchlm.infer.sampling import SamplingParams

    llm = LLM(tiny(), num_blocks=32, block_size=4)
    llm.generate([[1, 2, 3, 4, 5, 6, 7, 8, 9]], SamplingParams(max_tokens=2, temperature=0))
    assert llm.engine.blocks.num_cached_blocks > 0
    assert llm.engine.reset_prefix_cache() > 0 and llm.engine.blocks.num_cached_blocks == 0
    assert llm.engine.blocks.num_free_blocks == 32
    llm.engine.add_request([1, 2, 3], SamplingParams(max_tokens=2))
    with pytest.raises(ScratchLMError, match="requests run"):
        llm.engine.reset_prefix_cache()
