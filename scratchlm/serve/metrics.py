"""Prometheus metrics of one server (own registry, so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "scratchlm_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("scratchlm_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("scratchlm_generation_tokens", "generated tokens", registry=r)
        self.ttft = Histogram(
            "scratchlm_time_to_first_token_seconds", "submit to first token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "scratchlm_inter_token_latency_seconds", "time between tokens of a sample", buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.running = Gauge("scratchlm_requests_running", "sequences the engine is running", registry=r)
        self.waiting = Gauge("scratchlm_requests_waiting", "sequences waiting for KV blocks or a slot", registry=r)
        self.kv_blocks_used = Gauge("scratchlm_kv_blocks_in_use", "KV blocks held by sequences", registry=r)
        self.kv_blocks_total = Gauge("scratchlm_kv_blocks_total", "KV blocks in the pool", registry=r)
        self.prefix_hit_rate = Gauge(
            "scratchlm_prefix_cache_hit_rate", "prompt tokens found in the prefix cache / prompt tokens", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
