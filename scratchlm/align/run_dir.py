"""What every alignment trainer does first: claim its run directory, and the padding id of its tokenizer."""

from __future__ import annotations

from pathlib import Path

from scratchlm.errors import ScratchLMError

RUN_FILES = ("metrics.jsonl", "checkpoint.pt", "model")  # present once a run has started


def open_run_dir(out_dir: str | Path, resume: bool) -> tuple[Path, Path]:
    """(run directory, its checkpoint path); refuses to start a new run over an existing one."""
    out = Path(out_dir)
    if not resume and any((out / name).exists() for name in RUN_FILES):
        raise ScratchLMError(f"{out} already holds a run: choose another out_dir, or resume it")
    out.mkdir(parents=True, exist_ok=True)
    return out, out / "checkpoint.pt"


def pad_id(chat) -> int:
    """The tokenizer's pad id, else its end-of-sequence id, else 0 (padding is masked out anyway)."""
    return chat.pad_id if chat.pad_id is not None else (chat.eos_id or 0)


def save_checkpoint(ckpt: Path, state: dict) -> None:
    """torch.save to a temp file, then rename: a run killed mid-save keeps its previous checkpoint."""
    import torch

    tmp = ckpt.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(ckpt)
