"""Loading a finished (or running) run directory: its config, model weights and tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from scratchlm.errors import ScratchLMError


def load_run(run_dir: str | Path, which: str = "best", device: str = "cpu"):
    """(model in eval mode, tokenizer, TrainConfig) of `run_dir`, from its best or latest checkpoint."""
    from scratchlm.config import load_config
    from scratchlm.model import TransformerLM
    from scratchlm.tokenizer import load_tokenizer
    from scratchlm.train.checkpoint import load_checkpoint
    from scratchlm.train.config import TrainConfig

    run_dir = Path(run_dir)
    snapshot = run_dir / "config.toml"
    if not snapshot.is_file():
        raise ScratchLMError(f"{run_dir} is not a run directory (no config.toml)")
    cfg = load_config(TrainConfig, "train", str(snapshot))
    pointer = run_dir / "checkpoints" / f"{which}.json"
    if not pointer.is_file():
        pointer = run_dir / "checkpoints" / "latest.json"
    if not pointer.is_file():
        raise ScratchLMError(f"{run_dir} has no checkpoint yet")
    step_dir = run_dir / "checkpoints" / json.loads(pointer.read_text())["dir"]
    model = TransformerLM(cfg.model)
    load_checkpoint(step_dir, model, map_location=device)
    model.to(device).eval()
    tok_path = cfg.data.tokenizer
    if not tok_path and cfg.data.train:
        from scratchlm.tokenizer.token_file import read_token_meta

        tok_path = read_token_meta(cfg.data.train).get("tokenizer") or ""
    if not tok_path or not Path(tok_path).exists():
        raise ScratchLMError(f"cannot find the tokenizer of {run_dir} (set data.tokenizer in its config)")
    return model, load_tokenizer(tok_path), cfg
