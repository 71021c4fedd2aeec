"""`scratchlm serve --model NAME|RUN_DIR|MODEL_DIR|FILE.gguf`: the OpenAI-compatible server and chat page."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from scratchlm.errors import ScratchLMError

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    from scratchlm.config import add_config_arguments

    p = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server and chat page over the inference engine",
        description=__doc__ + "\n\nBinds 127.0.0.1 unless --host says otherwise; --api-key (or SCRATCHLM_API_KEY) "
        "requires 'Authorization: Bearer <key>' on /v1/*. Other limits: --set max_body_bytes=..., max_tokens, "
        "max_n, max_queued, request_timeout_s, kv_cache_mb, max_num_seqs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a pretrained name, a run directory, a model directory or a .gguf")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--api-key", default=None, help="require this bearer key (default: $SCRATCHLM_API_KEY, or none)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: derived from --model)")
    p.add_argument("--device", default="cpu", help="torch device of the model (cpu, cuda)")
    add_config_arguments(p, "serve")
    p.set_defaults(func=run)


def model_name_of(spec: str) -> str:
    path = Path(spec)
    return path.stem if path.suffix == ".gguf" else path.name if path.name else str(spec)


def run(args: argparse.Namespace) -> int:
    from scratchlm.config import config_from_args, to_toml
    from scratchlm.serve.config import ServeConfig

    cfg = config_from_args(
        ServeConfig,
        "serve",
        args,
        {"host": args.host, "port": args.port, "api_key": args.api_key, "model_name": args.model_name},
    )
    if args.print_config:
        shown = to_toml(cfg).replace(f'api_key = "{cfg.api_key}"', 'api_key = "***"') if cfg.api_key else to_toml(cfg)
        print(shown, end="")
        return 0
    try:
        import uvicorn

        from scratchlm.serve.app import create_app
    except ImportError as e:
        raise ScratchLMError(f"serving needs the `serve` extra: pip install 'scratchlm[serve]' ({e})") from None
    from scratchlm.model.model_dir import load_model

    model, chat = load_model(args.model, device=args.device)
    app = create_app(model, chat, cfg, model_name=model_name_of(args.model))
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and cfg.resolved_api_key() is None:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model", cfg.host)
    log.info("chat page and API at http://%s:%d/ (model %r)", cfg.host, cfg.port, app.state.server.model_name)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", timeout_graceful_shutdown=5)
    return 0
