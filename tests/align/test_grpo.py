"""GRPO trainer end to end on a tiny byte-level model: metrics logged, a loadable model directory, exact resume,
bad prompt files named, reward functions that fail counted."""

import dataclasses
import json

import pytest
import torch

from scratchlm.align.grpo import GRPOConfig, PolicyGradientLoss, RolloutTargets, load_tasks, train_grpo
from scratchlm.align.pg_losses import grpo_microbatch_train_step
from scratchlm.align.tasks import arithmetic_task, write_task_jsonl
from scratchlm.errors import ScratchLMError
from scratchlm.model.config import ModelConfig
from scratchlm.model.transformer import TransformerLM
from scratchlm.tokenizer.chat import ChatTokenizer
from scratchlm.tokenizer.tokenizer import Tokenizer


def tiny(seed=0, context=48):
    torch.manual_seed(seed)
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
    chat = ChatTokenizer(tok, eos_token="<|endoftext|>")
    cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=context, d_model=32, n_layers=1, n_heads=2)
    return TransformerLM(cfg).eval(), chat


def cfg_for(tmp_path, prompts, **kw):
    base = dict(
        prompts=str(prompts),
        out_dir=str(tmp_path / "run"),
        held_out=4,
        steps=2,
        prompts_per_step=2,
        group_size=4,
        micro_batch=4,
        train_batch=4,
        epochs_per_batch=2,
        max_tokens=6,
        lr=1e-3,
        seed=3,
        checkpoint_every=1,
        kv_cache_mb=4,
    )
    base.update(kw)
    return GRPOConfig(**base)


def flaky_reward(response, truth):
    if "1" in response:
        raise RuntimeError("boom")
    return float("nan") if "2" in response else float(len(response) % 2)


def test_loss_fn_matches_microbatch_train_step():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (3, 5))
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    adv, old, ref = torch.randn(3, 1), torch.randn(3, 5) - 2, torch.randn(3, 5) - 2
    for norm in ("mean", "constant"):
        fn = PolicyGradientLoss("grpo_clip", 0.2, norm, 6.0, kl_coef=0.1)
        loss, parts = fn(logits, RolloutTargets(labels, mask, adv, adv, old, ref))
        lp = torch.log_softmax(logits.detach(), -1).gather(-1, labels[..., None])[..., 0].requires_grad_()
        ref_loss, meta = grpo_microbatch_train_step(
            lp,
            mask,
            1,
            "grpo_clip",
            advantages=adv,
            old_log_probs=old,
            cliprange=0.2,
            length_normalization=norm,
            normalize_constant=6.0,
            ref_log_probs=ref,
            kl_coef=0.1,
        )
        assert torch.allclose(loss, ref_loss, atol=1e-6)
        assert torch.allclose(parts["clip_fraction"], meta["clip_fraction"])


def test_grpo_runs_logs_saves_and_resumes_exactly(tmp_path):
    prompts = write_task_jsonl(arithmetic_task(12, seed=1, digits=1), tmp_path / "p.jsonl")
    full = train_grpo(cfg_for(tmp_path, prompts), model_and_chat=tiny())
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    for key in ("reward", "accuracy", "response_len", "entropy", "clip_fraction", "loss"):
        assert all(key in r for r in train), key
    assert train[0]["clip_fraction"] >= 0 and [e["step"] for e in full["evals"]] == [0, 2]
    from scratchlm.model.model_dir import load_model

    m, _ = load_model(full["model_dir"])
    direct = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]

    # interrupted after step 1, resumed: the same final weights
    cfg2 = cfg_for(tmp_path, prompts, out_dir=str(tmp_path / "run2"))
    assert train_grpo(cfg2, stop_after=1, model_and_chat=tiny())["stopped_at"] == 1
    train_grpo(cfg2, resume=True, model_and_chat=tiny())
    resumed = torch.load(tmp_path / "run2" / "checkpoint.pt", weights_only=True)["model"]
    for k in direct:
        assert torch.equal(direct[k], resumed[k]), k
    assert torch.equal(m.state_dict()["embed.weight"], direct["embed.weight"])
    with pytest.raises(ScratchLMError, match="already holds a run"):
        train_grpo(cfg2, model_and_chat=tiny())


def test_failing_reward_is_counted_not_fatal(tmp_path, monkeypatch):
    import sys
    import types

    mod = types.ModuleType("flaky_rewards_mod")
    mod.score = flaky_reward
    monkeypatch.setitem(sys.modules, "flaky_rewards_mod", mod)
    prompts = write_task_jsonl(arithmetic_task(10, seed=2, digits=1), tmp_path / "p.jsonl")
    cfg = cfg_for(
        tmp_path,
        prompts,
        reward="flaky_rewards_mod:score",
        steps=1,
        epochs_per_batch=1,
        loss_type="reinforce_with_baseline",
        kl_coef=0.05,
    )
    train_grpo(cfg, model_and_chat=tiny())
    rec = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "reward_errors" in rec[1] and "kl" in rec[1]


def test_bad_prompt_files_are_named(tmp_path):
    _, chat = tiny()
    p = tmp_path / "bad.jsonl"
    p.write_text(
        '{"prompt": "1+1=", "answer": "2"}\nnot json\n{"prompt": "x"}\n{"prompt": "' + "9" * 60 + '", "answer": "1"}\n'
    )
    tasks, stats = load_tasks(str(p), chat, max_prompt_len=40)
    assert len(tasks) == 1 and stats == {"records": 3, "bad_lines": 1, "skipped": 2}
    with pytest.raises(ScratchLMError, match="line 2"):
        load_tasks(str(p), chat, 40, on_error="fatal")
    p.write_text('{"prompt": "' + "9" * 60 + '", "answer": "1"}\n')
    with pytest.raises(ScratchLMError, match="record 0: prompt of 60 tokens > 40"):
        load_tasks(str(p), chat, 40, on_error="fatal")
    with pytest.raises(ScratchLMError, match="loss_type"):
        GRPOConfig(loss_type="ppo").validate()
    with pytest.raises(ScratchLMError, match="train_batch"):
        GRPOConfig(prompts_per_step=2, group_size=3, train_batch=4).validate()


def test_expert_iteration_keeps_only_verified_responses(tmp_path, monkeypatch):
    import sys
    import types

    from scratchlm.align.expert_iter import ExpertIterConfig, train_expert_iter

    mod = types.ModuleType("ei_rewards_mod")
    mod.score = lambda response, truth: float(response.startswith("7"))  # some samples pass, most do not
    monkeypatch.setitem(sys.modules, "ei_rewards_mod", mod)
    prompts = write_task_jsonl(arithmetic_task(10, seed=4, digits=1), tmp_path / "p.jsonl")
    cfg = ExpertIterConfig(prompts=str(prompts), out_dir=str(tmp_path / "ei"), held_out=2, rounds=2,
                           prompts_per_round=4, group_size=16, sft_steps=2, batch_size=4, max_tokens=3,
                           reward="ei_rewards_mod:score", lr=1e-3, kv_cache_mb=4)  # fmt: skip
    train_expert_iter(cfg, model_and_chat=tiny())
    recs = [json.loads(x) for x in (tmp_path / "ei" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    assert len(train) == 2
    for r in train:
        assert r["kept"] <= r["correct"] <= r["sampled"] == 64
        assert (r["sft_loss_first"] is None) == (r["kept"] == 0)
    # resumed after round 1 (a run of 1 round, then continued to 2) ends where the run of 2 rounds ended
    direct = torch.load(tmp_path / "ei" / "checkpoint.pt", weights_only=True)
    assert direct["round"] == 2
    first = dataclasses.replace(cfg, out_dir=str(tmp_path / "ei2"), rounds=1)
    train_expert_iter(first, model_and_chat=tiny())
    train_expert_iter(dataclasses.replace(first, rounds=2), resume=True, model_and_chat=tiny())
    resumed = torch.load(tmp_path / "ei2" / "checkpoint.pt", weights_only=True)
    assert resumed["round"] == 2 and resumed["opt_step"] == direct["opt_step"]
    for k in direct["model"]:
        assert torch.equal(direct["model"][k], resumed["model"][k]), k


def test_arithmetic_task_is_seeded_and_correct():
    a, b = arithmetic_task(50, seed=1, ops="+-*"), arithmetic_task(50, seed=1, ops="+-*")
    assert a == b and a != arithmetic_task(50, seed=2, ops="+-*")
    for r in a:
        assert int(eval(r["prompt"].rstrip("="))) == int(r["answer"])  # noqa: S307 - our own digits and ops
    with pytest.raises(ScratchLMError):
        arithmetic_task(1, ops="/")


def test_ppo_runs_trains_the_value_head_and_resumes_exactly(tmp_path):
    from scratchlm.align.ppo import PPOConfig, train_ppo

    prompts = write_task_jsonl(arithmetic_task(12, seed=5, digits=1), tmp_path / "p.jsonl")
    kw = dict(prompts=str(prompts), held_out=4, steps=2, prompts_per_step=8, group_size=1, micro_batch=4,
              train_batch=4, epochs_per_batch=2, max_tokens=5, lr=1e-3, seed=1, kv_cache_mb=4, checkpoint_every=1,
              kl_coef=0.05)  # fmt: skip
    train_ppo(PPOConfig(out_dir=str(tmp_path / "a"), **kw), model_and_chat=tiny())
    recs = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    assert len(train) == 2 and all("value_loss" in r and "clip_fraction" in r for r in train)
    direct = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    assert direct["value_head.proj.weight"].abs().sum() > 0  # the zero-initialised head was trained
    cfg = PPOConfig(out_dir=str(tmp_path / "b"), **kw)
    train_ppo(cfg, stop_after=1, model_and_chat=tiny())
    train_ppo(cfg, resume=True, model_and_chat=tiny())
    resumed = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    for k in direct:
        assert torch.equal(direct[k], resumed[k]), k
    with pytest.raises(ScratchLMError, match="grpo_clip"):
        PPOConfig(loss_type="no_baseline").validate()


def test_cli_grpo_from_a_model_directory_and_resume(tmp_path, capsys):
    from scratchlm.cli import main
    from scratchlm.model.model_dir import save_model_dir

    model, chat = tiny()
    save_model_dir(model, chat, tmp_path / "base")
    prompts = write_task_jsonl(arithmetic_task(10, seed=6, digits=1), tmp_path / "p.jsonl")
    sets = ["held_out=2", "steps=1", "prompts_per_step=2", "group_size=2", "micro_batch=4", "max_tokens=3",
            "kv_cache_mb=4"]  # fmt: skip
    argv = ["align", "grpo", "--model", str(tmp_path / "base"), "--prompts", str(prompts), "--reward", "gsm8k",
            "--out", str(tmp_path / "run")]  # fmt: skip
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    assert (tmp_path / "run" / "model" / "config.json").is_file() and (tmp_path / "run" / "config.toml").is_file()
    assert main(["align", "grpo", "--resume", str(tmp_path / "run")]) == 0  # nothing left to do: finishes cleanly
    assert main(argv) != 0  # the run directory is refused, not overwritten
    assert "exists and is not empty" in capsys.readouterr().err


def test_first_update_is_on_policy_ratio_one(tmp_path):
    # one optimizer step per rollout batch: the engine's log-probs (old) must equal the trainer's forward, so every
    # ratio is 1 and nothing clips; a stale or mismatched sampler shows up here as ratio_max != 1
    prompts = write_task_jsonl(arithmetic_task(10, seed=7, digits=1), tmp_path / "p.jsonl")
    cfg = cfg_for(tmp_path, prompts, steps=1, epochs_per_batch=1, train_batch=0, micro_batch=8, cliprange=0.01)
    train_grpo(cfg, model_and_chat=tiny())
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[1])
    assert rec["kind"] == "train" and abs(rec["ratio_max"] - 1) < 1e-4 and rec["clip_fraction"] == 0
