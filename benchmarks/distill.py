"""Logit distillation: SmolLM2-135M-Instruct distilled into a 7M-parameter student, against the same student
trained from scratch on the same tokens (same steps, batch, seed, lr schedule), CPU.

    python -m benchmarks.distill                                   # ~25 min on 2 busy cores
    python -m benchmarks.distill --steps 3 --spec-prompts 2 --eval-docs 5 --spec-tokens 8 --tag smoke

What it does:
1. data: owt_mini's first 90% of documents are for training, the last 10% are held out. The training token
   file is the first `steps x batch x seq_len + seq_len + 1` tokens of owt_mini in SmolLM2's tokenizer
   (benchmarks/_work/draft/owt_smollm2.tok), checked to end before the held-out documents.
2. the teacher's top-k cache of that file (`write_topk_cache`, bf16 teacher forward, the expensive part),
   reused by later runs while it matches the file.
3. two training runs of the student preset configs/train/draft-smollm2.toml (d_model 128, 4 layers, 4 heads,
   vocab 49152): `loss = "distill"` from the cache (alpha x forward KL + (1 - alpha) x cross-entropy), and
   the plain cross-entropy. Both saved as model directories (with SmolLM2's chat tokenizer) under
   benchmarks/_work/distill/models/, usable as speculative drafts.
4. bits per byte (`scratchlm.eval.bpb`) of both students on the held-out owt_mini documents and on
   tinystories_val (never trained on).
5. speculative decoding of SmolLM2 (greedy, batch 1, `--spec-tokens` new tokens) on `--spec-prompts` chat
   prompts with each student as the draft (k = `--spec-k`) vs no speculation: acceptance rate, tokens/s.
Results: benchmarks/results/distill.{md,json} (with `--tag T`: benchmarks/_work/distill/distill_T.{md,json}).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from benchmarks.bench_engine import OPEN, QUOTING, chat_ids
from benchmarks.common import EOT, OWT_MINI, REPO, RESULTS, TEXT, WORK, markdown_table
from benchmarks.quality_common import machine_line

TEACHER = "smollm2-135m-instruct"
STUDENT = REPO / "configs" / "train" / "draft-smollm2.toml"  # the student shape, optimiser and schedule
TOKENS = WORK / "draft" / "owt_smollm2.tok"  # owt_mini in SmolLM2's tokenizer, documents in file order
OUT = WORK / "distill"
PROMPTS = (
    QUOTING
    + OPEN
    + [
        "What are three good habits for staying healthy?",
        "Write a short poem about the sea.",
        "How do I make a cup of tea?",
        "Give me a list of five fruits and their colours.",
    ]
)


def held_out_split(text: str, fraction: float = 0.9) -> tuple[int, str]:
    """(number of training documents, the held-out text: the last 1 - fraction of the documents)."""
    docs = text.split(EOT)
    n_train = int(len(docs) * fraction)
    return n_train, EOT.join(docs[n_train:])


def ensure_tokens() -> None:
    """owt_mini in SmolLM2's tokenizer (TOKENS), encoded once and reused."""
    from scratchlm.model.model_dir import load_model
    from scratchlm.tokenizer.encode_corpus import encode_file

    if TOKENS.is_file():
        return
    _, chat = load_model(TEACHER)
    tok_dir = TOKENS.parent / "tokenizer"  # the sidecar names a tokenizer directory that later files reuse
    chat.tokenizer.save(tok_dir, overwrite=True)
    encode_file(chat.tokenizer, OWT_MINI, TOKENS, tokenizer_source=str(tok_dir))


def make_train_file(n_tokens: int, n_train_docs: int):
    """The first `n_tokens` of TOKENS as their own token file (reused while it matches); they must lie in the
    first `n_train_docs` documents (the document separator is id 0 in SmolLM2's vocabulary)."""
    from scratchlm.tokenizer.token_file import read_token_meta, write_token_file
    from scratchlm.train.data import TokenData

    ensure_tokens()
    meta = read_token_meta(TOKENS)
    tokens = TokenData(TOKENS).tokens
    ids = np.asarray(tokens[:n_tokens])
    sep = meta["doc_separator_id"]
    docs_touched = int((ids == sep).sum()) + 1
    if docs_touched > n_train_docs:
        raise SystemExit(f"{n_tokens} training tokens reach document {docs_touched} > {n_train_docs}: held-out text")
    path = OUT / f"train_{n_tokens}.tok"
    if not (path.is_file() and read_token_meta(path)["count"] == n_tokens):
        write_token_file(ids, path, tokenizer=meta["tokenizer"], overwrite=True, source=str(TOKENS))
    return path, docs_touched


def topk_cache(train_file, args) -> tuple:
    """(cache path, seconds to write it, reused?)."""
    from scratchlm.errors import ScratchLMError
    from scratchlm.model.model_dir import load_model
    from scratchlm.train.distill import TopKCache, write_topk_cache

    path = OUT / f"{train_file.stem}.top{args.k}.t{args.temperature:g}"
    try:
        cache = TopKCache(path, tokens=train_file, temperature=args.temperature)
        if cache.k == args.k and cache.meta["seq_len"] == args.seq_len:
            return path, cache.meta["seconds"], True
    except ScratchLMError:
        pass
    teacher, chat = load_model(TEACHER)
    meta = write_topk_cache(
        teacher, train_file, path, k=args.k, temperature=args.temperature, seq_len=args.seq_len,
        batch_size=8, teacher_name=TEACHER, teacher_tokenizer_hash=chat.tokenizer.hash, precision="bf16",
        overwrite=True,
    )  # fmt: skip
    return path, meta["seconds"], False


def train_student(name: str, train_file, cache, args) -> dict:
    from scratchlm.config import load_config
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.loop import train

    sets = [
        f"out_dir={json.dumps(str(OUT / 'runs' / name))}", f"data.train={json.dumps(str(train_file))}",
        'data.valid=""', f"steps={args.steps}", f"batch_size={args.batch_size}", f"seq_len={args.seq_len}",
        f"seed={args.seed}", "eval_every=0", "sample_tokens=0", "time_limit_s=0", "log_every=5",
        f"schedule.warmup_steps={args.warmup}", "checkpoint_every=0", "device=cpu",
    ]  # fmt: skip
    if cache is not None:
        sets += [
            "loss=distill", f"distill.topk_cache={json.dumps(str(cache))}", f"distill.teacher={TEACHER}",
            f"distill.kind={args.kind}", f"distill.temperature={args.temperature}", f"distill.alpha={args.alpha}",
        ]  # fmt: skip
    cfg = load_config(TrainConfig, "train", str(STUDENT), sets)
    print(f"== {name}: {cfg.steps} steps of {cfg.tokens_per_step} tokens", flush=True)
    summary = train(cfg, overwrite=True)
    return {"seconds": summary["seconds"], "tokens": summary["tokens"], "final_loss": summary["final_loss"]}


def last_parts(run_dir) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rec = [r for r in map(json.loads, lines) if r["kind"] == "train"][-1]
    return {k: rec[k] for k in ("ce", "kd") if k in rec}


def bpb_rows(models: dict, chat, texts: dict, context: int) -> dict:
    """{(model, text name): bits_per_byte result}; texts: {name: (text, document separator or None)}."""
    from scratchlm.eval.bpb import bits_per_byte

    out = {}
    for name, model in models.items():
        for tname, (text, separator) in texts.items():
            with torch.no_grad():
                r = bits_per_byte(model, chat, text, context=context, separator=separator)
            out[(name, tname)] = r
            print(f"bpb {name} on {tname}: {r['bits_per_byte']:.4f} ({r['tokens']} tokens, {r['seconds']:.0f} s)")
    return out


def speculative(target, chat, drafts: dict, n_prompts: int, max_tokens: int, k: int) -> list[dict]:
    """SmolLM2 greedy decoding, one prompt at a time, with each draft vs none (the bench_engine setup)."""
    from scratchlm.infer.engine import LLM
    from scratchlm.infer.sampling import SamplingParams
    from scratchlm.infer.spec_decode import SpeculativeConfig

    prompts = [chat_ids(chat, t) for t in PROMPTS[:n_prompts]]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    rows, base_out, base_s = [], None, None
    for name, draft in {"none": None, **drafts}.items():
        spec = {} if draft is None else {"speculative": SpeculativeConfig("draft", k)}
        llm = LLM(target, chat, draft_model=draft, num_blocks=256, block_size=16, max_num_seqs=1, **spec)
        llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
        before = dict(llm.engine.stats)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params)
        seconds = time.perf_counter() - t0
        st = {key: v - before[key] for key, v in llm.engine.stats.items()}
        acceptance = st["spec_accepted"] / st["spec_proposed"] if draft is not None and st["spec_proposed"] else None
        ids = [o.outputs[0].token_ids for o in outs]
        base_out, base_s = (ids, seconds) if draft is None else (base_out, base_s)
        rows.append({
            "draft": name, "k": k if draft is not None else 0,
            "acceptance": acceptance,
            "tokens_per_forward": len(prompts) * (max_tokens - 1) / max(1, st["steps"] - len(prompts)),
            "tokens_per_s": len(prompts) * max_tokens / seconds, "speedup": base_s / seconds,
            "identical": ids == base_out,
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60, help="optimizer steps of each student")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--warmup", type=int, default=10, help="lr warmup steps (the draft run's wsd schedule otherwise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=64, help="teacher top-k kept per position")
    p.add_argument("--kind", default="forward", choices=["forward", "reverse", "mix"])
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--eval-docs", type=int, default=0, help="held-out documents scored (0 = all of the last 10%%)")
    p.add_argument("--tinystories-bytes", type=int, default=100_000, help="leading bytes of tinystories_val scored")
    p.add_argument("--teacher-bpb", action=argparse.BooleanOptionalAction, default=True, help="score the teacher too")
    p.add_argument("--spec-prompts", type=int, default=8)
    p.add_argument("--spec-tokens", type=int, default=64)
    p.add_argument("--spec-k", type=int, default=4)
    p.add_argument("--tag", default="", help="suffix of the result files")
    args = p.parse_args()

    from scratchlm.model.model_dir import load_model, save_model_dir

    text = OWT_MINI.read_text(encoding="utf-8")
    n_train_docs, held_out = held_out_split(text)
    if args.eval_docs:
        held_out = EOT.join(held_out.split(EOT)[: args.eval_docs])
    # tinystories_val has no document separators: its first bytes, cut at a blank line, as one text
    stories = (TEXT / "tinystories_val.txt").read_text(encoding="utf-8")[: args.tinystories_bytes].rsplit("\n\n", 1)[0]
    n_tokens = args.steps * args.batch_size * args.seq_len + args.seq_len + 1
    train_file, docs_touched = make_train_file(n_tokens, n_train_docs)

    t0 = time.perf_counter()
    cache, cache_s, reused = topk_cache(train_file, args)
    print(f"cache {cache} ({'reused' if reused else 'written'}, {cache_s:.0f} s)", flush=True)
    runs = {"from scratch": train_student("scratch", train_file, None, args)}
    runs["distilled"] = train_student("distilled", train_file, cache, args)
    for name, d in (("from scratch", "scratch"), ("distilled", "distilled")):
        runs[name].update(last_parts(OUT / "runs" / d))

    teacher, chat = load_model(TEACHER)
    students = {}
    for name, d in (("from scratch", "scratch"), ("distilled", "distilled")):
        model, _ = load_model(OUT / "runs" / d, which="latest")
        save_model_dir(model, chat, OUT / "models" / d, overwrite=True,
                       provenance={"benchmark": "benchmarks/distill.py", "run": str(OUT / "runs" / d)})  # fmt: skip
        students[name] = model.eval()
    texts = {"owt_mini held-out": (held_out, EOT), "tinystories_val": (stories, None)}
    bpb = bpb_rows(students, chat, texts, args.seq_len)
    if args.teacher_bpb:  # the reference the students are measured against (bf16 autocast: 2x faster on CPU)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bpb.update(bpb_rows({"teacher": teacher}, chat, texts, args.seq_len))
    spec = (
        speculative(teacher, chat, students, args.spec_prompts, args.spec_tokens, args.spec_k)
        if args.spec_prompts
        else []
    )

    report = {
        "machine": machine_line(),
        "args": vars(args),
        "train_tokens_file": n_tokens,
        "train_documents": docs_touched,
        "held_out_documents": len(held_out.split(EOT)),
        "cache": {"path": str(cache), "seconds": cache_s, "reused": reused},
        "runs": runs,
        "bpb": {f"{m} | {t}": r for (m, t), r in bpb.items()},
        "speculative": spec,
        "total_seconds": time.perf_counter() - t0,
        "argv": sys.argv[1:],
    }
    write(report, args, bpb)


def write(report: dict, args, bpb: dict) -> None:
    stem = "distill" + (f"_{args.tag}" if args.tag else "")
    where = OUT if args.tag else RESULTS  # a tagged (trial) run stays in the scratch space
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    runs, a = report["runs"], args
    rows = []
    for name, r in runs.items():
        extra = (
            r["seconds"] if name == "from scratch" else f"{r['seconds']:.0f} + cache {report['cache']['seconds']:.0f}"
        )
        rows.append([
            name, r["tokens"], bpb[(name, "owt_mini held-out")]["bits_per_byte"],
            bpb[(name, "tinystories_val")]["bits_per_byte"], r.get("ce", float("nan")), extra,
        ])  # fmt: skip
    if ("teacher", "owt_mini held-out") in bpb:
        rows.append([
            "teacher: SmolLM2-135M-Instruct (bf16 autocast)", "its pretraining",
            bpb[("teacher", "owt_mini held-out")]["bits_per_byte"],
            bpb[("teacher", "tinystories_val")]["bits_per_byte"], "-", "-",
        ])  # fmt: skip
    cmd = " ".join(["python -m benchmarks.distill", *report["argv"]])
    lines = [
        "# Logit distillation: SmolLM2-135M-Instruct -> 7.1M student, vs the same student from scratch",
        "",
        f"Machine: {report['machine']}.",
        f"Command: `{cmd}`.",
        "",
        f"Both students: the preset configs/train/draft-smollm2.toml (d_model 128, 4 layers, 4 heads, vocab 49152, "
        f"7.1M parameters), Muon + AdamW, WSD schedule ({a.warmup} warmup steps), seed {a.seed}, {a.steps} steps "
        f"of {a.batch_size} x {a.seq_len} tokens, drawn from the same file: the first {report['train_tokens_file']} "
        f"tokens of owt_mini (documents 1-{report['train_documents']}). Distilled: loss = {a.alpha} x "
        f"{a.kind} KL (temperature {a.temperature}, teacher top-{a.k} + rest bucket, cached once) + "
        f"{1 - a.alpha:g} x cross-entropy. Bits per byte with `scratchlm.eval.bpb` (context {a.seq_len}) on the "
        f"held-out last 10% of owt_mini's documents ({report['held_out_documents']} documents) and on "
        f"the first {a.tinystories_bytes // 1000} kB of tinystories_val (one text, windows of {a.seq_len} tokens).",
        "",
        markdown_table(
            [
                "student",
                "tokens seen",
                "bpb owt held-out",
                "bpb tinystories",
                "last train CE (nats)",
                "wall s (train + teacher cache)",
            ],
            rows,
        ),  # fmt: skip
        "",
        f"Teacher top-{a.k} cache ({report['train_tokens_file']} positions, bf16 teacher forward): "
        f"{report['cache']['seconds']:.0f} s{' (reused from an earlier run)' if report['cache']['reused'] else ''}.",
    ]
    if report["speculative"]:
        lines += [
            "",
            f"Speculative decoding of SmolLM2-135M-Instruct (fp32, CPU, engine, batch 1, greedy, {a.spec_tokens} "
            f"new tokens, EOS ignored) on {a.spec_prompts} chat prompts, each student as the draft, k = {a.spec_k}:",
            "",
            markdown_table(
                ["draft", "k", "acceptance", "tokens / target forward", "tokens/s", "speedup", "same output"],
                [
                    [
                        r["draft"],
                        r["k"],
                        "-" if r["acceptance"] is None else r["acceptance"],
                        r["tokens_per_forward"],
                        r["tokens_per_s"],
                        r["speedup"],
                        r["identical"],
                    ]
                    for r in report["speculative"]
                ],
            ),  # fmt: skip
        ]
    lines += ["", f"Total wall time {report['total_seconds']:.0f} s. Raw numbers: {stem}.json.", ""]
    (where / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
