"""Quality benchmark 1: nanoGPT's Tiny Shakespeare CPU recipe reproduced in scratchlm, then scratchlm's
`default` recipe on the same data in the same wall-clock time.

    python -m benchmarks.bench_shakespeare            # ~6 minutes on 2 CPU cores

The reference (nanoGPT, `train.py config/train_shakespeare_char.py --device=cpu --compile=False
--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`): validation loss 1.8857 at step 2000, 136-140 s
wall in eager mode on this machine. Its GPT-2 architecture through scratchlm's switches: learned
positions, pre-LayerNorm, exact GELU MLP (4x), no biases (nanoGPT's default bias=False), tied
embeddings, std 0.02 init with residual projections scaled by 1/sqrt(2 n_layers); AdamW
(0.9, 0.99), weight decay 0.1 on every 2-D tensor (embeddings included), 100 warmup steps, cosine
to 1e-4, clip 1.0. Tokens are bytes (a 256-token BPE with no merges); the corpus is ASCII, so a byte
is a character and the loss is per character as in nanoGPT (whose vocabulary has the 65 characters
present; 191 unused rows here).

Differences we keep: nanoGPT estimates the validation loss from 20 random batches (a few hundredths
of noise); here it is the whole validation split (111,540 characters), once at the end. Time is
the training loop (step 1 to 2000) measured in the worker process.

The default recipe (configs/train/default.toml: RoPE, RMSNorm, SwiGLU, Muon, WSD) keeps the model
shape and context; its steps are set so that its training time matches the reproduction's, from
a step-time calibration measured right before (interleaved on the same machine state).
Results: benchmarks/results/quality_shakespeare.{md,json}.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import time

from benchmarks.common import RESULTS, TEXT, markdown_table, save_report
from benchmarks.quality_common import (
    QUALITY,
    calibrate,
    machine_line,
    merge,
    rerun_train_command,
    slug,
    token_files,
    train_run,
)

STEM = "quality_shakespeare"
REFERENCE = {"val_loss": 1.8857, "seconds": "136-140", "steps": 2000}
SHAPE = {"vocab_size": 256, "context_length": 64, "d_model": 128, "n_layers": 4, "n_heads": 4}
NANOGPT = {
    "steps": 2000, "batch_size": 12, "seq_len": 64,
    "eval_every": 0, "eval_tokens": 0, "sample_tokens": 0, "log_every": 50,
    "model": {**SHAPE, "positions": "learned", "norm": "layernorm", "mlp": "gelu", "bias": False,
              "tie_embeddings": True},
    "optim": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.1, "decay_embeddings": True,
              "grad_clip": 1.0},
    "schedule": {"name": "cosine", "warmup_steps": 100, "min_lr_ratio": 0.1},
}  # fmt: skip


def default_recipe(batch_size: int) -> dict:
    """configs/train/default.toml at the nanoGPT shape (its switches, optimizer and schedule kept)."""
    return {"batch_size": batch_size, "seq_len": 64, "eval_every": 0, "sample_tokens": 0, "log_every": 50,
            "model": dict(SHAPE)}  # fmt: skip


def run(batch_sizes: list[int]) -> dict:
    t0 = time.time()
    data = token_files(TEXT / "tinyshakespeare.txt", "shakespeare-bytes", 256, [], 0.1)
    base = {"data": data["data"]}
    out = QUALITY / "shakespeare-runs"
    machine = machine_line()

    # Step times first, back to back (one machine state), then the runs with fixed step counts.
    runs = {"nanoGPT recipe in scratchlm": (None, merge(base, NANOGPT))}
    runs.update({f"scratchlm default, batch {bs}": ("default", merge(base, default_recipe(bs)))
                 for bs in batch_sizes})  # fmt: skip
    step_s = {name: calibrate(p, c, out / "calibrate" / slug(name)) for name, (p, c) in runs.items()}
    budget = NANOGPT["steps"] * step_s["nanoGPT recipe in scratchlm"]
    for name, (_, cfg) in runs.items():
        if name != "nanoGPT recipe in scratchlm":
            cfg["steps"] = int(budget / step_s[name])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # 1 thread each: same results, sooner
        futures = {n: pool.submit(train_run, p, c, out / slug(n), 1) for n, (p, c) in runs.items()}
        results = {n: f.result() for n, f in futures.items()}
    raw = {"machine": machine, "reference": REFERENCE, "budget_s": budget, "runs": {}}
    for name, (preset, cfg) in runs.items():
        raw["runs"][name] = {"preset": preset, "config": cfg, "calibrated_step_s": step_s[name],
                             "result": results[name], "command": rerun_train_command(preset, cfg)}  # fmt: skip
    raw["total_s"] = time.time() - t0
    return raw


def render(raw: dict) -> str:
    ref = raw["reference"]
    rows = [["nanoGPT (published, this machine)", ref["steps"], ref["steps"] * 12 * 64, ref["seconds"],
             f"{ref['val_loss']:.4f}", "-", "-"]]  # fmt: skip
    for name, run in raw["runs"].items():
        r = run["result"]
        est = r["steps"] * run["calibrated_step_s"]
        rows.append([name, r["steps"], r["tokens"], est, f"{r['val_loss']:.4f}", f"{r['val_bpb']:.4f}",
                     f"{est / raw['budget_s']:.2f}"])  # fmt: skip
    header = ["recipe", "steps", "tokens", "train s (2 threads)", "val loss (nats/char)", "val bits/byte",
              "time / reproduction"]  # fmt: skip
    return "\n".join([
        "# Tiny Shakespeare, byte level: nanoGPT's CPU recipe and scratchlm's default recipe",
        "",
        f"- {raw['machine']}",
        "- rerun: `python -m benchmarks.bench_shakespeare`; each row's `scratchlm train` command is in"
        " quality_shakespeare.json (data files from benchmarks/_work/quality)",
        "- validation: the whole last 10% of tinyshakespeare.txt (nanoGPT: 20 random batches of 12 x 64)",
        "- train s = steps x the step time measured at 2 threads (fastest 5-step interval of a 60-step"
        " calibration run; the machine is shared); the runs themselves used 1 thread each, two at a time",
        "",
        markdown_table(header, rows),
        "",
        f"Total benchmark time {raw['total_s']:.0f} s.",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[12, 32], help="default-recipe batch sizes")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the committed .json")
    args = parser.parse_args()
    raw = json.loads((RESULTS / f"{STEM}.json").read_text()) if args.render else run(args.batch_sizes)
    save_report(RESULTS, STEM, render(raw), raw)


if __name__ == "__main__":
    main()
