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
    res = {"hf_export_max_logit_diff": diff, "trl_seconds": trl_seconds, "ours_train_seconds": ours_train_seconds,
           "trl_rewards": [h.get("reward") for h in hist][::4], "trl_losses": [h["loss"] for h in hist],
           "ours_rewards": [r["reward"] for r in tr], "ours_losses": [r["loss"] for r in tr],
           "trl_clip": [h.get("clip_ratio/region_mean") for h in hist]}  # fmt: skip
    (WORK / "trl_report.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
