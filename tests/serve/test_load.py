"""A bounded load test on loopback: 64 concurrent streaming clients, every stream complete and well formed, no
KV block leaked; clients that disconnect mid-stream abort their requests and leak nothing either; /metrics."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from conftest import start_server, tiny_model_and_chat

CLIENTS, ROUNDS = 64, 2


async def _one_stream(client: httpx.AsyncClient, url: str, k: int, disconnect_after: int | None) -> tuple[str, int]:
    body = {"model": "tiny", "prompt": f"client {k}:", "max_tokens": 24, "temperature": 0.8, "seed": k,
            "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
    text, events = "", []
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            events.append(line[6:])
            if disconnect_after is not None and len(events) >= disconnect_after:
                return "disconnected", 0  # leaving the block closes the connection mid-stream
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    return text, chunks[-1]["usage"]["completion_tokens"]


async def _load(url: str, disconnect_half: bool):
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker(k):
            out = []
            for _ in range(ROUNDS):
                cut = 3 if disconnect_half and k % 2 else None
                out.append(await _one_stream(client, url, k, cut))
            return out

        return await asyncio.wait_for(asyncio.gather(*(worker(k) for k in range(CLIENTS))), timeout=120)


def test_64_concurrent_streams_then_half_disconnecting_leak_nothing():
    s = start_server()
    try:
        t0 = time.perf_counter()
        results = asyncio.run(_load(s.url, disconnect_half=False))
        took = time.perf_counter() - t0
        for rounds in results:
            assert all(n == 24 for _, n in rounds)
            assert rounds[0][0] == rounds[1][0]  # same seed, same text, whatever else was batched with it
        s.wait_idle()
        results = asyncio.run(_load(s.url, disconnect_half=True))
        assert sum(r == "disconnected" for rounds in results for r, _ in rounds) == CLIENTS
        s.wait_idle()  # aborted requests gave their blocks back
        metrics = httpx.get(s.url + "/metrics").text
        assert 'scratchlm_requests_total{endpoint="/v1/completions",status="200"} 256.0' in metrics
        assert "scratchlm_kv_blocks_in_use 0.0" in metrics and "scratchlm_requests_running 0.0" in metrics
        assert "scratchlm_time_to_first_token_seconds_count" in metrics
        assert took < 100
    finally:
        s.stop()


def test_metrics_count_tokens_and_prefix_hits():
    s = start_server(model_and_chat=tiny_model_and_chat())
    try:
        body = {"model": "tiny", "prompt": "p" * 40, "max_tokens": 5, "ignore_eos": True}
        for _ in range(2):
            assert httpx.post(s.url + "/v1/completions", json=body, timeout=30).status_code == 200
        m = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in httpx.get(s.url + "/metrics").text.splitlines()
            if line and not line.startswith("#")
        }
        assert m["scratchlm_generation_tokens_total"] == 10 and m["scratchlm_prompt_tokens_total"] == 80
        assert m["scratchlm_time_to_first_token_seconds_count"] == 2
        assert m["scratchlm_inter_token_latency_seconds_count"] == 8
        assert 0.3 < m["scratchlm_prefix_cache_hit_rate"] < 0.5  # the second prompt's 36 of 80 tokens hit
        assert httpx.get(s.url + "/health").json()["status"] == "ok"
    finally:
        s.stop()
