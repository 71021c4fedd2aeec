"""Serving: an OpenAI-compatible HTTP server over the inference engine, and a chat page.

scratchlm serve --model smollm2-135m-instruct             # http://127.0.0.1:8000/

from scratchlm.serve import create_app, ServeConfig        # needs the `serve` extra (fastapi, uvicorn)
"""

from scratchlm.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name):
    if name == "create_app":
        from scratchlm.serve.app import create_app

        return create_app
    raise AttributeError(name)
