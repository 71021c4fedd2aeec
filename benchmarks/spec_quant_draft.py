"""Quantised SmolLM2 as its own speculative draft: acceptance and end-to-end speed (CPU, engine, batch 1).

    PYTHONPATH=. python -m benchmarks.spec_quant_draft                        # ~5 min on 2 quiet cores
    PYTHONPATH=. python -m benchmarks.spec_quant_draft --prompts 2 --tokens 16 --out /tmp/s.md   # a smoke run

The distilled 7.1M students of benchmarks/distill.py agree with SmolLM2 on ~3% of proposed tokens (too
little training on CPU), so as drafts they slow decoding down (results/distill.md). A quantised copy of the
target itself is the other cheap draft the seeds name: it agrees far more often, and the int8 / int4 CPU
kernels make it ~1.6x faster than fp32 (results/compress_table.md). Pairs measured, greedy, EOS ignored,
the same chat prompts as distill.py: fp32 target with an int8 / int4-g64 draft, and an int8 target with an
int4-g64 draft (its output is the int8 model's: speculation is lossless against the target).
Results: benchmarks/results/spec_quant_draft.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, markdown_table, save_report
from benchmarks.distill import TEACHER, speculative
from benchmarks.quality_common import machine_line

# (target, draft) rows; each target also runs alone (the "none" row of `speculative`)
PAIRS = {"fp32": ["int8", "int4-g64"], "int8": ["int4-g64"]}


def build(kind: str):
    from scratchlm.compress.quant import QuantConfig, quantize_model
    from scratchlm.model.model_dir import load_model

    model, chat = load_model(TEACHER, progress=False)
    if kind == "int8":
        model = quantize_model(model, QuantConfig(bits=8))
    elif kind.startswith("int4-g"):
        model = quantize_model(model, QuantConfig(bits=4, group_size=int(kind[6:])))
    elif kind != "fp32":
        raise SystemExit(f"unknown model kind {kind!r}")
    return model.eval(), chat


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64, help="new tokens per prompt")
    p.add_argument("--k", type=int, nargs="+", default=[2, 4], help="draft tokens per step (one row each)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "spec_quant_draft.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    given = sys.argv[1:] if argv is None else argv
    rows = []
    with torch.inference_mode():
        for target_kind, draft_kinds in PAIRS.items():
            target, chat = build(target_kind)
            drafts = {d: build(d)[0] for d in draft_kinds}
            for k in args.k:
                for r in speculative(target, chat, drafts, args.prompts, args.tokens, k):
                    if r["draft"] == "none" and k != args.k[0]:
                        continue  # the target alone once per target
                    rows.append({"target": target_kind, **r})
    body = [
        [r["target"], r["draft"], r["k"], "-" if r["acceptance"] is None else f"{r['acceptance']:.3f}",
         f"{r['tokens_per_forward']:.2f}", f"{r['tokens_per_s']:.1f}", f"{r['speedup']:.2f}", r["identical"]]
        for r in rows
    ]  # fmt: skip
    md = "\n".join([
        "# A quantised copy of SmolLM2 as its speculative draft (CPU, engine, batch 1)",
        "",
        f"- {machine_line()}; torch {torch.__version__}, {args.threads} threads; load average {load0:.2f} at the "
        f"start, {os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - t0:.0f} s in all",
        f"- {args.prompts} chat prompts (benchmarks/distill.py's), greedy, {args.tokens} new tokens each, EOS ignored. "
        "acceptance = accepted / proposed draft tokens; tokens / target forward counts the verify steps; speedup "
        "and 'same output' are against the same target decoding alone (the `none` row).",
        f"- rerun: `PYTHONPATH=. python -m benchmarks.spec_quant_draft {' '.join(given)}`",
        "",
        markdown_table(["target", "draft", "k", "acceptance", "tokens / target forward", "tokens/s", "speedup",
                        "same output"], body),  # fmt: skip
        "",
    ])  # fmt: skip
    save_report(args.out.parent, args.out.stem, md, {"args": vars(args) | {"out": str(args.out)}, "rows": rows})


if __name__ == "__main__":
    main()
