"""Structured pruning + recovery: SmolLM2-135M-Instruct pruned Minitron-style to ~70% of its parameters, then
fine-tuned a few steps with logit distillation from the unpruned model (its top-k cache), CPU.

    python -m benchmarks.prune_recover                      # ~30 min on 2 busy cores
    python -m benchmarks.prune_recover --steps 2 --batch-size 2 --eval-docs 3 --tinystories-bytes 5000 --tag smoke

Data are those of benchmarks/distill.py (and its files are shared with it): training windows from the first
90% of owt_mini's documents in SmolLM2's tokenizer (the teacher's top-k cache of them, written once and
reused), scored on the last 10% (held out) and on tinystories_val (never trained on). Calibration for the
importance scores: the first `--calib-seqs` x `--calib-len` training tokens.

Rows: the dense teacher; the pruned model before recovery; after `--steps` steps of distillation (alpha x
forward KL on the cached top-k + (1 - alpha) x cross-entropy, AdamW, WSD schedule) through the shared
`train_step`; with `--ce-baseline`, the same steps with the cross-entropy alone. Results:
benchmarks/results/prune_recover.{md,json} (with `--tag T`: benchmarks/_work/distill/prune_recover_T.*).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks.common import EOT, OWT_MINI, RESULTS, TEXT, WORK, markdown_table
from benchmarks.distill import TEACHER, held_out_split, make_train_file, topk_cache
from benchmarks.quality_common import machine_line

OUT = WORK / "distill"


def prune(teacher, train_file, args):
    """The structured prune of `teacher` (a new, smaller TransformerLM), calibrated on training tokens."""
    from scratchlm.compress.structured import calibration_tokens, prune_structured
    from scratchlm.train.data import TokenData

    n = args.calib_seqs * args.calib_len
    ids = TokenData(train_file).tokens[:n].astype("int64").tolist()
    calib = calibration_tokens(ids, args.calib_seqs, args.calib_len)  # (calib_seqs, calib_len)
    return prune_structured(teacher, calib, d_ff=args.d_ff, n_heads=args.n_heads, n_layers=args.n_layers)


def recover(model, train_file, cache, args, distill: bool) -> dict:
    """`args.steps` optimizer steps on `model` in place: distillation from the cache, or cross-entropy only."""
    from scratchlm.train.config import DistillConfig, OptimConfig, ScheduleConfig
    from scratchlm.train.data import RandomWindows, TokenData
    from scratchlm.train.distill import DistillLoss, TopKCache
    from scratchlm.train.losses import build_loss
    from scratchlm.train.optim import build_optimizer
    from scratchlm.train.schedules import Schedule
    from scratchlm.train.step import train_step

    model.train()
    loader = RandomWindows(TokenData(train_file), args.batch_size, args.seq_len, seed=args.seed)
    if distill:
        dcfg = DistillConfig(teacher=TEACHER, kind="forward", temperature=args.temperature, alpha=args.alpha)
        loss_fn = DistillLoss(dcfg, cache=TopKCache(cache, tokens=train_file, temperature=args.temperature))
    else:
        from scratchlm.train.config import TrainConfig

        loss_fn = build_loss(TrainConfig())
    optimizer = build_optimizer(model, OptimConfig(lr=args.lr, weight_decay=0.0))
    schedule = Schedule(optimizer, ScheduleConfig(name="wsd", warmup_steps=args.warmup), args.steps)
    curve, t0 = [], time.perf_counter()
    for i in range(args.steps):
        x, y = loader.batch(i)
        if distill:
            y = loss_fn.batch_targets(x, y, loader.starts(i))
        micro = [(x[j : j + args.micro], y[j : j + args.micro]) for j in range(0, args.batch_size, args.micro)]
        r = train_step(model, micro, loss_fn, optimizer, schedule, step=i, precision="bf16", grad_clip=1.0)
        parts = {k: float(v) for k, v in r.parts.items()}
        curve.append({"step": i, "loss": r.loss, **parts})
        print(f"  step {i}: loss {r.loss:.4f} {parts} ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    return {"seconds": time.perf_counter() - t0, "curve": curve}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="recovery optimizer steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--micro", type=int, default=4, help="rows per micro-batch (gradient accumulation)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--train-tokens",
        type=int,
        default=60 * 16 * 256 + 257,
        help="training token file (default: benchmarks/distill.py's, whose teacher cache is then reused)",
    )
    p.add_argument("--k", type=int, default=64, help="teacher top-k kept per position (the cache)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--d-ff", type=int, default=1024, help="pruned MLP width (SmolLM2: 1536)")
    p.add_argument("--n-heads", type=int, default=None, help="pruned query heads (SmolLM2: 9 over 3 KV)")
    p.add_argument("--n-layers", type=int, default=25, help="layers kept (SmolLM2: 30)")
    p.add_argument("--calib-seqs", type=int, default=32)
    p.add_argument("--calib-len", type=int, default=256)
    p.add_argument("--ce-baseline", action="store_true", help="also recover with cross-entropy alone")
    p.add_argument("--eval-docs", type=int, default=0, help="held-out documents scored (0 = all of the last 10%%)")
    p.add_argument("--tinystories-bytes", type=int, default=100_000)
    p.add_argument("--tag", default="")
    args = p.parse_args()
    if args.batch_size % args.micro:
        p.error(f"--batch-size {args.batch_size} is not a multiple of --micro {args.micro}")

    from scratchlm.eval.bpb import bits_per_byte
    from scratchlm.model.model_dir import load_model, save_model_dir

    t_start = time.perf_counter()
    text = OWT_MINI.read_text(encoding="utf-8")
    n_train_docs, held_out = held_out_split(text)
    if args.eval_docs:
        held_out = EOT.join(held_out.split(EOT)[: args.eval_docs])
    stories = (TEXT / "tinystories_val.txt").read_text(encoding="utf-8")[: args.tinystories_bytes].rsplit("\n\n", 1)[0]
    texts = {"owt_mini held-out": (held_out, EOT), "tinystories_val": (stories, None)}
    train_file, _ = make_train_file(args.train_tokens, n_train_docs)
    cache, cache_s, reused = topk_cache(train_file, args)
    print(f"cache {cache} ({'reused' if reused else 'written'}, {cache_s:.0f} s)", flush=True)

    def score(name: str, model) -> dict:
        out = {}
        for tname, (t, sep) in texts.items():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                r = bits_per_byte(model, chat, t, context=args.seq_len, separator=sep)
            out[tname] = r["bits_per_byte"]
            print(f"bpb {name} on {tname}: {r['bits_per_byte']:.4f} ({r['seconds']:.0f} s)", flush=True)
        return out

    teacher, chat = load_model(TEACHER)
    rows = [{"model": "dense SmolLM2-135M-Instruct", "params": teacher.num_params, "bpb": score("dense", teacher)}]
    t0 = time.perf_counter()
    pruned = prune(teacher, train_file, args)
    prune_s = time.perf_counter() - t0
    c = pruned.config
    what = f"d_ff {c.d_ff}, {c.n_heads} heads / {c.kv_heads} kv, {c.n_layers} layers"
    state = {k: v.clone() for k, v in pruned.state_dict().items()}
    rows.append({"model": f"pruned ({what})", "params": pruned.num_params, "bpb": score("pruned", pruned),
                 "seconds": prune_s})  # fmt: skip
    del teacher
    variants = [("distillation", True)] + ([("cross-entropy", False)] if args.ce_baseline else [])
    for label, distill in variants:
        pruned.load_state_dict(state)
        print(f"== recovery: {label}, {args.steps} steps of {args.batch_size} x {args.seq_len}", flush=True)
        rec = recover(pruned, train_file, cache, args, distill)
        rows.append({"model": f"pruned + {args.steps} steps {label}", "params": pruned.num_params,
                     "bpb": score(label, pruned), "seconds": rec["seconds"], "curve": rec["curve"]})  # fmt: skip
        write(
            {
                "machine": machine_line(),
                "args": vars(args),
                "rows": rows,
                "cache": str(cache),
                "partial": True,
                "total_seconds": time.perf_counter() - t_start,
                "argv": sys.argv[1:],
            },
            args,
        )  # a kill keeps the rows so far
        if distill:
            save_model_dir(pruned, chat, OUT / "models" / "pruned_recovered", overwrite=True,
                           provenance={"benchmark": "benchmarks/prune_recover.py", "args": vars(args)})  # fmt: skip
    report = {"machine": machine_line(), "args": vars(args), "rows": rows, "cache": str(cache),
              "total_seconds": time.perf_counter() - t_start, "argv": sys.argv[1:]}  # fmt: skip
    write(report, args)


def write(report: dict, args) -> None:
    stem = "prune_recover" + (f"_{args.tag}" if args.tag else "")
    where = RESULTS if not args.tag else OUT
    where.mkdir(parents=True, exist_ok=True)
    rows = report["rows"]
    dense = rows[0]["bpb"]
    table = []
    for r in rows:
        cells = [r["model"], f"{r['params'] / 1e6:.1f}M ({100 * r['params'] / rows[0]['params']:.0f}%)"]
        for t, v in r["bpb"].items():
            cells.append(f"{v:.4f} ({100 * (v / dense[t] - 1):+.1f}%)")
        cells.append(f"{r['seconds']:.0f}" if "seconds" in r else "-")
        table.append(cells)
    a = report["args"]
    lines = [
        "# Structured pruning + recovery fine-tune: SmolLM2-135M-Instruct",
        "",
        f"- {report['machine']}",
        f"- rerun: `python -m benchmarks.prune_recover {' '.join(report['argv'])}`",
        f"- recovery: {a['steps']} AdamW steps (lr {a['lr']}, WSD, bf16 autocast) of {a['batch_size']} x "
        f"{a['seq_len']} tokens from the first 90% of owt_mini; distillation = {a['alpha']} x forward KL "
        f"against the dense model's cached top-{a['k']} (+ rest bucket) + {1 - a['alpha']:g} x cross-entropy, "
        f"T = {a['temperature']}",
        f"- importance from {a['calib_seqs']} x {a['calib_len']} training tokens; bits/byte in parentheses: change "
        "against the dense model; context = seq_len",
        "",
        markdown_table(["model", "params", *(f"{t} bits/byte" for t in dense), "seconds"], table),
        "",
        f"Total {report['total_seconds'] / 60:.0f} min.",
        "",
    ]
    (where / f"{stem}.md").write_text("\n".join(lines))
    (where / f"{stem}.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {where / stem}.md")


if __name__ == "__main__":
    main()
