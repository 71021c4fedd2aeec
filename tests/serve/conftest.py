"""A tiny random model with a byte-level chat tokenizer behind a real uvicorn server on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import uvicorn  # noqa: E402

from scratchlm.model import ModelConfig, TransformerLM  # noqa: E402
from scratchlm.serve.app import create_app  # noqa: E402
from scratchlm.serve.config import ServeConfig  # noqa: E402
from scratchlm.tokenizer.chat import ChatTokenizer  # noqa: E402
from scratchlm.tokenizer.tokenizer import Tokenizer  # noqa: E402

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONTEXT = 256


def tiny_model_and_chat(seed: int = 0):
    torch.manual_seed(seed)
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    chat = ChatTokenizer(tok, eos_token="<|im_end|>", chat_template=CHATML)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=CONTEXT, d_model=32, n_layers=2, n_heads=4)
    model = TransformerLM(cfg).eval()
    return model, chat


class RunningServer:
    def __init__(self, app, port: int):
        self.app, self.port = app, port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def engine(self):
        return self.app.state.server.engine

    def start(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until the engine holds no request and no KV block (aborts travel through the engine thread)."""
        srv = self.app.state.server
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            e = srv.engine
            if srv.loop.num_active == 0 and not e.requests and e.blocks.num_free_blocks == e.blocks.num_blocks:
                return
            time.sleep(0.02)
        raise AssertionError(
            f"engine not idle: {srv.loop.num_active} active, {len(srv.engine.requests)} requests, "
            f"{srv.engine.blocks.num_blocks - srv.engine.blocks.num_free_blocks} blocks in use"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config: ServeConfig | None = None, model_and_chat=None, name: str = "tiny") -> RunningServer:
    model, chat = model_and_chat or tiny_model_and_chat()
    config = config or ServeConfig(kv_cache_mb=8, block_size=4)
    return RunningServer(create_app(model, chat, config, model_name=name), free_port()).start()


@pytest.fixture(scope="session")
def server():
    s = start_server()
    yield s
    s.stop()
