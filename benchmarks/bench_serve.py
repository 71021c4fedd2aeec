"""Load generator for OpenAI-compatible servers: requests/s, output tokens/s, TTFT and inter-token latency
(p50/p99) at several concurrency levels, streaming chat completions with fixed prompts and output lengths.

    PYTHONPATH=. python -m benchmarks.bench_serve                       # starts scratchlm's server on SmolLM2
    PYTHONPATH=. python -m benchmarks.bench_serve --url http://127.0.0.1:8001 --model NAME   # any other server

The same generator drives any server (e.g. `python -m llama_cpp.server --model F32.gguf`), so the numbers are
comparable. Output tokens are counted from the stream's chunks carrying text (one token per chunk on both
servers for this model; `usage` when the server sends it)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

PROMPTS = [
    "Explain how a bicycle works.",
    "Write a short poem about the sea.",
    "What are the three states of matter? Describe each.",
    "Give me a recipe for pancakes.",
]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def one(client, url, model, k, max_tokens):
    body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    t0 = time.perf_counter()
    stamps, usage = [], None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if d.get("usage"):
                usage = d["usage"]["completion_tokens"]
            if d["choices"] and d["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
    ttft = stamps[0] - t0
    itl = [b - a for a, b in zip(stamps, stamps[1:])]
    return ttft, itl, usage if usage is not None else len(stamps)


async def level(url, model, clients, per_client, max_tokens):
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as client:

        async def worker(k):
            return [await one(client, url, model, k * per_client + i, max_tokens) for i in range(per_client)]

        t0 = time.perf_counter()
        res = [x for w in await asyncio.gather(*(worker(k) for k in range(clients))) for x in w]
        wall = time.perf_counter() - t0
    ttfts = [r[0] for r in res]
    itls = [x for r in res for x in r[1]]
    toks = sum(r[2] for r in res)
    return {
        "clients": clients, "requests": len(res), "wall_s": round(wall, 2), "req_per_s": round(len(res) / wall, 3),
        "out_tok_per_s": round(toks / wall, 1),
        "ttft_p50_ms": round(1000 * statistics.median(ttfts), 1), "ttft_p99_ms": round(1000 * pct(ttfts, 0.99), 1),
        "itl_p50_ms": round(1000 * statistics.median(itls), 1), "itl_p99_ms": round(1000 * pct(itls, 0.99), 1),
    }  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="a running server; default: start scratchlm's on --spec")
    ap.add_argument("--spec", default="smollm2-135m-instruct")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="the model id sent to the server")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--label", default="scratchlm")
    ap.add_argument("--out", default="benchmarks/results/serve.json")
    args = ap.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
        from conftest import start_server  # the tests' in-process uvicorn on a free loopback port

        from scratchlm.model.model_dir import load_model
        from scratchlm.serve.config import ServeConfig

        model, chat = load_model(args.spec)
        server = start_server(ServeConfig(kv_cache_mb=1024), (model, chat), name=args.model)
        url = server.url
    rows = []
    try:
        for c in map(int, args.clients.split(",")):
            row = asyncio.run(level(url, args.model, c, args.requests_per_client, args.max_tokens))
            row["server"] = args.label
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        if server is not None:
            server.stop()
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() else []
    keep = [r for r in old if r.get("server") != args.label]
    out.write_text(json.dumps(keep + rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
