"""The server's settings: one typed config, like every other stage (`scratchlm serve --set key=value`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from scratchlm.errors import InvalidArgument

API_KEY_ENV = "SCRATCHLM_API_KEY"


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # loopback unless told otherwise: the server is not exposed by default
    port: int = 8000
    api_key: str = ""  # "" = the SCRATCHLM_API_KEY environment variable, or no key at all
    model_name: str = ""  # the id /v1/models lists and requests name; "" = derived from --model
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    max_tokens: int = 4096  # upper limit on a request's max_tokens (and the default when it gives none)
    default_max_tokens: int = 256  # max_tokens of a request that does not set it (capped by the context)
    max_n: int = 8  # most samples per request
    max_queued: int = 256  # requests in the engine (running + waiting) before 429
    request_timeout_s: float = 600.0  # a request running longer is aborted
    # the engine under the server (scratchlm.infer.engine.EngineConfig)
    kv_cache_mb: int = 512
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    enable_prefix_caching: bool = True

    def validate(self) -> None:
        if not 0 <= self.port < 65536:
            raise InvalidArgument(f"port must be in [0, 65535], got {self.port}")
        for name in ("max_body_bytes", "max_tokens", "default_max_tokens", "max_n", "max_queued", "kv_cache_mb"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.request_timeout_s > 0:
            raise InvalidArgument(f"request_timeout_s must be > 0, got {self.request_timeout_s}")

    def resolved_api_key(self) -> str | None:
        return self.api_key or os.environ.get(API_KEY_ENV) or None
