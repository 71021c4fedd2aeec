"""DPO on HH-RLHF (harmless) with SmolLM2-135M-Instruct, and the first steps side by side with TRL.

    nice .venv/bin/python -m benchmarks.align_dpo            # -> benchmarks/results/align_dpo.{md,json,png}
    nice .venv/bin/python -m benchmarks.align_dpo --steps 30 --trl-steps 6 --held-out 100

1. `scratchlm.align.dpo.train_dpo` on the first pairs of ../shared/data/instruct/hh_rlhf_harmless_test.jsonl.gz
   (the last `--held-out` usable pairs kept out): held-out preference accuracy (implicit reward of chosen >
   rejected; ties count half) before and after, loss / reward accuracy / margin per step.
2. TRL's DPOTrainer on the same model (transformers loads the same GGUF), the same token ids (our chat-template
   encoding is handed to TRL, so both see identical rows), the same batches in the same order, the same
   hyper-parameters (AdamW betas, lr, constant schedule, grad clip, beta, fp32, reference log-probs precomputed):
   loss per step must agree (step 0: log 2 for both, by definition), and seconds per step as a ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.bench_pretrained import gguf_file
from benchmarks.common import RESULTS, WORK

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruct" / "hh_rlhf_harmless_test.jsonl.gz"
MODEL = "smollm2-135m-instruct"


def ours(args) -> tuple[dict, list[dict], list]:
    from scratchlm.align.dpo import DPOConfig, load_pairs, train_dpo

    out = WORK / "align_dpo" / "ours"
    shutil.rmtree(out, ignore_errors=True)
    cfg = DPOConfig(model=MODEL, data=str(DATA), out_dir=str(out), beta=args.beta, steps=args.steps,
                    batch_size=args.batch, micro_batch=args.batch, lr=args.lr, warmup_steps=0,
                    schedule="constant", adam_betas=[0.9, 0.95], max_len=args.max_len, held_out=args.held_out,
                    max_pairs=args.steps * args.batch + args.held_out, precision="fp32",
                    checkpoint_every=0, seed=0)  # fmt: skip
    t = time.perf_counter()
    summary = train_dpo(cfg)
    summary["wall_seconds"] = time.perf_counter() - t
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the batches train_dpo drew, in order, for TRL
    from scratchlm.model.model_dir import load_model

    _, chat = load_model(MODEL, progress=False)
    train, _, _ = load_pairs(cfg, chat)
    import random

    order = list(range(len(train)))
    random.Random(cfg.seed).shuffle(order)
    batches = [train[order[(s * cfg.batch_size + j) % len(train)]] for s in range(args.trl_steps)
               for j in range(cfg.batch_size)]  # fmt: skip
    return summary, [r for r in rows if r["kind"] == "train"], batches


def trl_side(args, pairs) -> list[dict]:
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    g = gguf_file(MODEL)
    model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
    # the GGUF is de-quantised to fp32 on load; transformers still flags it as quantised and refuses to train it
    for attr in ("hf_quantizer", "is_quantized"):
        if attr in vars(model):
            setattr(model, attr, None if attr == "hf_quantizer" else False)
    tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    ds = Dataset.from_list([{"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids}
                            for p in pairs])  # fmt: skip

    class SameTokens(DPOTrainer):
        """Our token ids as they are (no re-tokenisation), batches in our order."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    rows, t = [], {}

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            t["start"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            rows.append({"step": state.global_step, "seconds": time.perf_counter() - t["start"]})

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs and rows:
                rows[-1].update({k: v for k, v in logs.items() if isinstance(v, (int, float))})

    out = WORK / "align_dpo" / "trl"
    shutil.rmtree(out, ignore_errors=True)
    cfg = DPOConfig(output_dir=str(out), beta=args.beta, learning_rate=args.lr, lr_scheduler_type="constant",
                    warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.0,
                    max_grad_norm=1.0, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                    max_steps=args.trl_steps, logging_steps=1, save_strategy="no", report_to=[], max_length=None,
                    precompute_ref_log_probs=True, use_cpu=True, bf16=False, fp16=False, seed=0,
                    dataloader_num_workers=0, loss_type=["sigmoid"])  # fmt: skip
    trainer = SameTokens(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Timer()])
    trainer.train()
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(steps, [r["loss"] for r in rows], marker="o")
    ax[0].set_title("DPO loss (train batch)")
    ax[1].plot(steps, [r["margin"] for r in rows], marker="o")
    ax[1].set_title("reward margin beta*(dchosen - drejected)")
    ax[2].plot(steps, [r["logp_chosen"] for r in rows], marker="o", label="chosen")
    ax[2].plot(steps, [r["logp_rejected"] for r in rows], marker="o", label="rejected")
    ax[2].set_title("policy sequence log-prob")
    ax[2].legend()
    for a in ax:
        a.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--trl-steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--held-out", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-trl", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    summary, rows, batches = ours(args)
    print(json.dumps({"ours": rows[: args.trl_steps], "evals": summary["evals"]}), flush=True)
    trl_rows = [] if args.skip_trl else trl_side(args, batches)
    print(json.dumps({"trl": trl_rows}), flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(rows, RESULTS / "align_dpo.png")
    res = {"args": vars(args), "summary": summary, "ours": rows, "trl": trl_rows}
    (RESULTS / "align_dpo.json").write_text(json.dumps(res, indent=1))
    (RESULTS / "align_dpo.md").write_text(report(args, summary, rows, trl_rows))
    print((RESULTS / "align_dpo.md").read_text())


def report(args, summary, rows, trl_rows) -> str:
    ev0, ev1 = summary["evals"][0], summary["evals"][-1]
    lines = [
        "# DPO on HH-RLHF (harmless) with SmolLM2-135M-Instruct, and TRL side by side",
        "",
        f"`nice .venv/bin/python -m benchmarks.align_dpo --steps {args.steps} --trl-steps {args.trl_steps} "
        f"--batch {args.batch} --lr {args.lr} --beta {args.beta} --max-len {args.max_len} "
        f"--held-out {args.held_out}` on a shared 2-core CPU, fp32.",
        "",
        f"Data: the first {summary['train_pairs']} usable pairs of hh_rlhf_harmless_test.jsonl.gz for training, "
        f"the next {summary['held_out_pairs']} held out; chat template, prompts cut from the left to "
        f"{args.max_len // 2} tokens, responses to fit {args.max_len}. Encoding counts: {summary['pairs']}.",
        f"Hyper-parameters: beta {args.beta}, AdamW lr {args.lr} (betas 0.9/0.95, no decay), constant lr, "
        f"grad clip 1.0, {args.batch} pairs per step, {args.steps} steps; reference log-probs precomputed once "
        f"({summary['reference_seconds']:.0f} s).",
        "",
        "## Held-out preference accuracy (implicit reward of chosen > rejected, ties count half)",
        "",
        "| step | accuracy | 95% CI | mean margin (log-ratio) | n |",
        "|---|---|---|---|---|",
    ]
    for e in summary["evals"]:
        lines.append(f"| {e['step']} | {e['accuracy']:.3f} | [{e['ci95'][0]:.2f}, {e['ci95'][1]:.2f}] | "
                     f"{e['margin']:+.4f} | {e['n']} |")  # fmt: skip
    lines += [
        "",
        f"Step 0 is the reference itself (every margin 0). After {args.steps} steps: {ev1['accuracy']:.3f} "
        f"(was {ev0['accuracy']:.3f}); plain log-prob accuracy (policy log p(chosen) > log p(rejected)) "
        f"{ev0['logp_accuracy']:.3f} -> {ev1['logp_accuracy']:.3f}.",
        "",
        "## Training curves (align_dpo.png)",
        "",
        "![DPO curves](align_dpo.png)",
        "",
        "| step | loss | reward acc | margin | logp chosen | logp rejected | s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['step']} | {r['loss']:.4f} | {r['accuracy']:.2f} | {r['margin']:+.4f} | "
                     f"{r['logp_chosen']:.2f} | {r['logp_rejected']:.2f} | {r['seconds']:.1f} |")  # fmt: skip
    if trl_rows:
        lines += ["", "## Side by side with TRL (same token ids, batches, hyper-parameters)", "",
                  "| step | loss ours | loss TRL | margin ours | margin TRL | s/step ours | s/step TRL |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r, t in zip(rows, trl_rows):
            lines.append(f"| {r['step']} | {r['loss']:.5f} | {t.get('loss', float('nan')):.5f} | "
                         f"{r['margin']:+.5f} | {t.get('rewards/margins', float('nan')):+.5f} | "
                         f"{r['seconds']:.1f} | {t['seconds']:.1f} |")  # fmt: skip
        n = min(len(rows), len(trl_rows))
        ours_med = statistics.median(r["seconds"] for r in rows[1:n])  # step 1 includes one-off warm-up
        trl_med = statistics.median(t["seconds"] for t in trl_rows[1:n])
        dl = max(abs(r["loss"] - t["loss"]) for r, t in zip(rows, trl_rows) if "loss" in t)
        lines += ["", f"Largest |loss ours - loss TRL| over the shared steps: {dl:.2e}.",
                  f"Median seconds per step over shared steps 2..{n}: ours {ours_med:.2f}, TRL {trl_med:.2f} "
                  f"(ratio ours/TRL {ours_med / trl_med:.2f}). The machine is shared with other jobs: the ratio "
                  "is indicative."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
