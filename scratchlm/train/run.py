"""Loading a finished (or running) run directory: its config, model weights and tokenizer.

For generation, evaluation and export (`scratchlm generate --run DIR`):

    model, tokenizer, cfg = load_run("runs/quickstart")                 # best checkpoint, else the latest
    model, tokenizer, cfg = load_run("runs/quickstart", which="latest", device="cuda")
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from scratchlm.config import load_config
from scratchlm.errors import ScratchLMError
from scratchlm.model import TransformerLM
from scratchlm.tokenizer import load_tokenizer
from scratchlm.tokenizer.token_file import read_token_meta
from scratchlm.train.checkpoint import find_checkpoint, load_weights
from scratchlm.train.config import TrainConfig


def load_run(run_dir: str | Path, which: Literal["best", "latest"] = "best", device: str = "cpu"):
    """(model in eval mode, tokenizer, TrainConfig) of `run_dir`, from its best (else latest) or latest checkpoint."""
    run_dir = Path(run_dir)
    snapshot = run_dir / "config.toml"
    if not snapshot.is_file():
        raise ScratchLMError(f"{run_dir} is not a run directory (no config.toml)")
    cfg = load_config(TrainConfig, "train", str(snapshot))
    try:
        step_dir = find_checkpoint(run_dir, which)
    except ScratchLMError:
        if which != "best":
            raise
        step_dir = find_checkpoint(run_dir, "latest")  # no best yet (no evaluation ran): the last weights
    model = TransformerLM(cfg.model)
    load_weights(step_dir, model, map_location=device)
    model.to(device).eval()
    tok_path = find_data_path(cfg.data.tokenizer, run_dir)
    if tok_path is None and cfg.data.train:
        train_path = find_data_path(cfg.data.train, run_dir)
        tok_path = find_data_path(read_token_meta(train_path).get("tokenizer") or "", run_dir) if train_path else None
    if tok_path is None:
        raise ScratchLMError(f"cannot find the tokenizer of {run_dir} (set data.tokenizer in its config)")
    return model, load_tokenizer(tok_path), cfg


def find_data_path(path: str, run_dir: Path) -> Path | None:
    """A path from a run's config: as written, else (a relative path) under a directory above the run.

    Relative paths are relative to where training was launched (`scratchlm quickstart` writes
    runs/quickstart/tokenizer next to runs/quickstart/run), so a run loaded from another working
    directory finds its files under the ancestor that was the launch directory."""
    if not path:
        return None
    if Path(path).exists():
        return Path(path)
    if Path(path).is_absolute():
        return None
    for base in Path(run_dir).resolve().parents:
        if (base / path).exists():
            return base / path
    return None
