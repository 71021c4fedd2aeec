"""llama.cpp (through `llama-cpp-python`, the `bench` extra) on the same SmolLM2 weights, for bench_engine.

    f32 = write_f32_gguf(shipped_gguf, out_dir / "smollm2-f32.gguf")   # the shipped Q4_1/Q8_0 blocks dequantised
    rows = batch1_rows({"F32": f32, "Q4_1 (as shipped)": shipped_gguf}, prompt_ids, n_tokens, repeats)

SmolLM2-135M-Instruct ships as Q4_1 (a Q8_0 embedding); scratchlm and transformers run those weights
dequantised to fp32, so the comparable llama.cpp file is the same dequantised values stored as F32:
`write_f32_gguf` copies every metadata field and rewrites every tensor as F32 with the `gguf` package.
The shipped file itself is a second row (llama.cpp's own quantised kernels: the compression issue's
int4 paths compare with it).

`llama-cpp-python` builds llama.cpp from source at install (`pip install 'scratchlm[bench]'`): ~4 minutes
here with `CMAKE_ARGS="-DGGML_NATIVE=OFF"` and 2 build jobs (dev/LOG.md). Without it these rows are skipped
with the reason.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np


def write_f32_gguf(src: Path, dst: Path) -> Path:
    """The GGUF at `src` with every tensor dequantised to F32 (metadata copied); written once, atomically."""
    import gguf

    if dst.is_file():
        return dst
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    tmp = dst.with_suffix(".partial")
    writer = gguf.GGUFWriter(tmp, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue  # the writer sets these
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims innermost first
        writer.add_tensor(t.name, data.reshape(shape), raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(dst)
    return dst


def available() -> str:
    """'' when llama-cpp-python imports, else why not."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return f"llama-cpp-python is not installed (pip install 'scratchlm[bench]'): {e}"
    return ""


def _load(path: Path, threads: int, n_ctx: int = 2048):
    from llama_cpp import Llama

    return Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)


def greedy(llm, ids: list[int], n: int) -> list[int]:
    """n greedy tokens after `ids` (EOS ignored), from a fresh context."""
    llm.reset()
    out = []
    for tok in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(tok))
        if len(out) == n:
            break
    return out


def batch1_rows(files: dict[str, Path], ids: list[int], n: int, repeats: int, threads: int) -> list[dict]:
    rows = []
    for label, path in files.items():
        llm = _load(path, threads)
        greedy(llm, ids, 2)  # warm-up
        ttft, total = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            greedy(llm, ids, 1)
            ttft.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            greedy(llm, ids, n)
            total.append(time.perf_counter() - t0)
        t1, tn = statistics.median(ttft), statistics.median(total)
        rows.append(
            {"engine": f"llama.cpp {label} ({threads} threads)", "prompt_tokens": len(ids), "ttft_s": t1,
             "decode_tok_s": (n - 1) / (tn - t1)}
        )  # fmt: skip
        print(rows[-1], flush=True)
        del llm
    return rows


def trace_row(path: Path, reqs: list[tuple[list[int], int]], threads: int) -> dict:
    """llama-cpp-python's `Llama` serves one sequence at a time: the trace's requests one after another."""
    llm = _load(path, threads, n_ctx=1024)
    t0 = time.perf_counter()
    tokens = sum(len(greedy(llm, p, k)) for p, k in reqs)
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall}
