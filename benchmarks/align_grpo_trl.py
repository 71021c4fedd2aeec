"""TRL's GRPOTrainer side by side with `scratchlm align grpo`: the same base model, prompts, reward and
hyper-parameters (run `benchmarks.align_grpo` first: it writes the base model and the prompt files).

    nice python -m benchmarks.align_grpo_trl --steps 5     # appends the comparison to results/align_grpo.md

Mapping: scratchlm prompts_per_step x group_size = 16 x 8 rollouts per step, epochs_per_batch 2, train_batch 64
<-> TRL num_generations 8, per_device_train_batch_size 64, steps_per_generation 2, num_iterations 2 (4 optimizer
steps per generation batch in both); GRPO-clip epsilon 0.2, beta 0 (no KL), per-response token mean
(TRL loss_type "grpo"), std-scaled group advantages, AdamW lr 3e-4 betas (0.9, 0.99) no weight decay,
constant lr, grad clip 1.0, temperature 1, 3 new tokens. The base model goes to TRL as a Hugging Face
directory (`model.hf_export`: Llama weights + a `tokenizers` byte-level tokenizer).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "align_grpo"
RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5, help="rollout batches (x4 optimizer steps)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # on a busy 2-core machine one thread is ~10x faster than two
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from scratchlm.align.grpo import GRPOConfig as OurConfig
    from scratchlm.align.grpo import train_grpo
    from scratchlm.align.rewards import gsm8k_reward
    from scratchlm.model.hf_export import save_hf_with_tokenizer
    from scratchlm.model.model_dir import load_model

    base = WORK / "base"
    model, chat = load_model(base, progress=False)
    hf_dir = WORK / "base_hf"
    save_hf_with_tokenizer(model, chat, hf_dir, overwrite=True)
    rows = [json.loads(x) for x in (WORK / "train.jsonl").read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])

    def reward(prompts, completions, answer, **kw):
        return [gsm8k_reward(c, a)["reward"] for c, a in zip(completions, answer, strict=True)]

    tok = AutoTokenizer.from_pretrained(hf_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    # the exported model scores a prompt exactly as ours does (same weights, same tokens)
    ids = torch.tensor([chat.encode("3+4=", add_special=False)])
    with torch.no_grad():
        diff = (hf_model(ids).logits - model(ids, output="logits")).abs().max().item()
    cfg = GRPOConfig(
        output_dir=str(WORK / "trl_out"), num_generations=8, per_device_train_batch_size=64, steps_per_generation=2,
        num_iterations=2, beta=0.0, epsilon=0.2, loss_type="grpo", scale_rewards="group", max_completion_length=3,
        temperature=1.0, learning_rate=3e-4, adam_beta2=0.99, weight_decay=0.0, lr_scheduler_type="constant",
        max_grad_norm=1.0, logging_steps=1, max_steps=4 * args.steps, use_cpu=True, report_to="none", seed=0,
        save_strategy="no", bf16=False,
    )  # fmt: skip
    trainer = GRPOTrainer(model=hf_model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok)
    same_batch = same_batch_losses(trainer, hf_model, model, chat, rows)
    print("same-batch losses", same_batch, flush=True)
    t0 = time.perf_counter()
    trainer.train()
    trl_seconds = time.perf_counter() - t0
    hist = [h for h in trainer.state.log_history if "loss" in h]

    out = WORK / "ours_vs_trl"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    ours = OurConfig(model=str(base), prompts=str(WORK / "train.jsonl"), eval_prompts=str(WORK / "rl_only.jsonl"),
                     reward="gsm8k", out_dir=str(out), steps=args.steps, prompts_per_step=16, group_size=8,
                     epochs_per_batch=2, train_batch=64, micro_batch=64, lr=3e-4, cliprange=0.2, max_tokens=3,
                     advantage_eps=1e-4, checkpoint_every=0, kv_cache_mb=16)  # fmt: skip
    t0 = time.perf_counter()
    train_grpo(ours)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in recs if r["kind"] == "train"]
    ours_train_seconds = sum(r["seconds"] for r in tr)
    res = {"same_batch_losses": same_batch,
           "hf_export_max_logit_diff": diff, "trl_seconds": trl_seconds, "ours_train_seconds": ours_train_seconds,
           "trl_rewards": [h.get("reward") for h in hist][::4], "trl_losses": [h["loss"] for h in hist],
           "ours_rewards": [r["reward"] for r in tr], "ours_losses": [r["loss"] for r in tr],
           "trl_clip": [h.get("clip_ratio/region_mean") for h in hist]}  # fmt: skip
    (WORK / "trl_report.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    write_section(res, args.steps)


def write_section(res: dict, steps: int) -> None:
    import trl

    sb = res["same_batch_losses"]
    r = lambda xs: ", ".join(f"{x:.3f}" for x in xs)  # noqa: E731
    lines = [
        "## Side by side with TRL",
        "",
        f"Command: `nice .venv/bin/python -m benchmarks.align_grpo_trl --steps {steps}` (TRL {trl.__version__}, "
        "GRPOTrainer on CPU, offline). The same base model (exported with `model.hf_export`: max logit difference "
        f"{res['hf_export_max_logit_diff']:.1e}), prompts, reward and hyper-parameters (see the script's docstring).",
        "",
        "Loss on the same batch (our engine's 128 rollouts, their advantages, old log-probs perturbed so that "
        f"{sb['grpo']['clip_fraction']:.0%} of the tokens clip): TRL `_compute_loss` vs ours",
        "",
        "| TRL loss_type | ours | TRL | ours |",
        "|---|---|---|---|",
        f"| grpo | length_normalization=mean | {sb['grpo']['trl']:.8f} | {sb['grpo']['ours']:.8f} |",
        f"| dr_grpo | length_normalization=constant | {sb['dr_grpo']['trl']:.8f} | {sb['dr_grpo']['ours']:.8f} |",
        "",
        f"{steps} rollout steps (x4 optimizer steps) each: mean reward per rollout batch, "
        f"ours {r(res['ours_rewards'])}; "
        f"TRL {r(res['trl_rewards'])} (different samples, so the curves agree only in distribution). "
        f"Wall time for the {steps} steps: ours {res['ours_train_seconds']:.2f} s (rollouts through the engine + "
        f"updates), TRL {res['trl_seconds']:.2f} s (`trainer.train()`, HF `generate`): ratio ours / TRL = "
        f"{res['ours_train_seconds'] / res['trl_seconds']:.2f} (one torch thread each, the tiny model: this "
        "measures per-step overheads, not matmul speed).",
        "",
    ]
    md = RESULTS / "align_grpo.md"
    text = md.read_text() if md.is_file() else ""
    text = text.split("## Side by side with TRL")[0].rstrip() + "\n\n" + "\n".join(lines)
    md.write_text(text)


def same_batch_losses(trainer, hf_model, model, chat, rows) -> dict:
    """Both losses on one batch of our engine's rollouts (the same tokens, advantages and old log-probs,
    the old ones perturbed so that ratios differ from 1 and some clip): TRL's `_compute_loss` vs ours."""
    from scratchlm.align.grpo import PolicyGradientLoss, RolloutTargets
    from scratchlm.align.pg_losses import compute_group_normalized_rewards
    from scratchlm.align.rewards import reward_function
    from scratchlm.align.rollout import RolloutSampler, engine_log_probs_tensor, rollout_batch

    prompts = [chat.encode(r["prompt"], add_special=False) for r in rows[:16]]
    assert len({len(p) for p in prompts}) == 1  # "a+b=": no prompt padding needed
    ro = RolloutSampler(model, chat, kv_cache_mb=8).sample(prompts, 8, 3, seed=0)
    truths = [r["answer"] for r in rows[:16] for _ in range(8)]
    adv, raw, _ = compute_group_normalized_rewards(reward_function("gsm8k"), ro.texts, truths, 8, 1e-4)
    b = rollout_batch(ro.prompt_ids, ro.response_ids, chat.eos_id)
    g = torch.Generator().manual_seed(0)
    old = engine_log_probs_tensor(ro, b["labels"].shape) + 0.3 * torch.randn(b["labels"].shape, generator=g)
    P = len(prompts[0])
    T = max(map(len, ro.response_ids))
    comp = torch.full((len(ro.response_ids), T), chat.eos_id)
    cmask = torch.zeros(comp.shape, dtype=torch.long)
    for i, r in enumerate(ro.response_ids):
        comp[i, : len(r)], cmask[i, : len(r)] = torch.tensor(r), 1
    inputs = {"prompt_ids": torch.tensor(ro.prompt_ids), "prompt_mask": torch.ones(len(comp), P, dtype=torch.long),
              "completion_ids": comp, "completion_mask": cmask, "advantages": adv,
              "old_per_token_logps": old[:, P - 1 : P - 1 + T]}  # fmt: skip
    out = {}
    for trl_type, ours_norm in (("grpo", "mean"), ("dr_grpo", "constant")):
        trainer.loss_type = trl_type
        with torch.no_grad():
            theirs = float(trainer._compute_loss(hf_model, dict(inputs)))
            fn = PolicyGradientLoss("grpo_clip", 0.2, ours_norm, 3.0)
            y = RolloutTargets(b["labels"], b["response_mask"], adv[:, None], raw[:, None], old)
            ours, parts = fn(model(b["input_ids"], output="logits"), y)
        out[trl_type] = {"trl": theirs, "ours": float(ours), "clip_fraction": float(parts["clip_fraction"])}
    trainer.loss_type = "grpo"
    return out


if __name__ == "__main__":
    main()
