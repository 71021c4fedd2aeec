"""Checkpoints: one atomic directory per step, with pointers to the latest and the best.

    run_dir/checkpoints/
      step_0001000/
        model.safetensors   model state_dict (tied weights stored once)
        state.pt            optimizer, schedule, data position, RNG states
        meta.json           format + version, step, config, metrics, size + sha256 of both files
      latest.json           {"step": 1000, "dir": "step_0001000", "metrics": {...}}
      best.json             the same, for the best evaluation so far

    save_train_state(run_dir, state, to_dict(cfg), {"val_loss": 3.2})   # a TrainState (train/state.py)
    load_train_state(run_dir, state, map_location=device)              # latest; or a step_* dir; RNGs too

    # the same files from the separate pieces (evaluation, tools, older callers):
    path = save_checkpoint(run_dir, step, model, opt, sched, loader.state_dict(), to_dict(cfg), {"val_loss": 3.2})
    info = load_checkpoint(run_dir, model, opt, sched, restore_rng=True)
    loader.load_state_dict(info["data_state"])

A step directory is built under a temp name and renamed into place, and the pointers are
rewritten atomically after it, so a crash mid-save leaves the previous checkpoint and pointers
untouched. Loading verifies sizes and hashes first: a truncated file is an error naming it.
Save from one process (rank 0) with a full (unsharded) model and optimizer state.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import scratchlm
from scratchlm.config import flatten
from scratchlm.distributed.parallelize import unwrap_model
from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_dir, named_write_errors, read_json, write_json
from scratchlm.train.state import TrainState, restore_part, rng_state, set_rng_state

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "scratchlm-checkpoint"
CHECKPOINT_VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
_STEP_DIR = re.compile(r"step_(\d+)")
_STALE_TMP = re.compile(r"\.step_\d+\..*\.(tmp|old)")  # left by a save killed mid-way

# Config keys that may change when a run is resumed: they do not change what the model is trained
# on or how it is evaluated. Every other difference is an error (see check_resume_config).
RESUME_ALLOWED = (
    "steps",
    "eval_every",
    "log_every",
    "checkpoint_every",
    "keep_last",
    "time_limit_s",
    "sample_tokens",
    "sample_prompts",
    "out_dir",
    "device",
    "compile",
    "activation_checkpointing",
    "wandb",
    "tensorboard",
    # the process layout: checkpoints hold the full (unsharded) state, which any layout loads
    *(f"parallel.{k}" for k in ("dp_replicate", "dp_shard", "tp", "cp", "pp", "pp_schedule", "sequence_parallel")),
    "parallel.loss_parallel",
    *(f"parallel.{k}" for k in ("activation_checkpointing", "param_dtype", "reduce_dtype", "timeout_s")),
)
_PATH_KEYS = ("data.train", "data.valid", "data.tokenizer")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


# ---------------------------------------------------------------------------------------------
# model weights


def split_tied(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors safetensors can store (no shared memory) and {alias: stored name} for tied weights.

    Two entries that are the same view of the same memory (a tied output head and embedding) are
    stored once, under the first name; other entries sharing memory are copied.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, t in state_dict.items():
        t = t.detach()
        if t.numel() == 0:
            tensors[name] = t.clone()
            continue
        storage = (t.device, t.untyped_storage().data_ptr())
        view = (*storage, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if view in views:
            aliases[name] = views[view]
            continue
        views[view] = name
        tensors[name] = t.clone() if storage in storages else t.contiguous()
        storages.add(storage)
    return tensors, aliases


def _read_weights(path: Path, model: nn.Module, aliases: dict[str, str], map_location) -> dict[str, torch.Tensor]:
    """model.safetensors as a state_dict for `model`, checked against it: an error lists every mismatch."""
    device = map_location if isinstance(map_location, (str, int)) else str(torch.device(map_location))
    try:
        sd = load_file(path, device=device)
    except Exception as e:  # safetensors raises its own types for a bad header or a short file
        raise ScratchLMError(f"{path} is not a readable safetensors file ({e})") from None
    for alias, name in aliases.items():
        if name in sd:
            sd[alias] = sd[name]
    target = unwrap_model(model)
    expected = target.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k} {tuple(sd[k].shape)} (model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in sd and v.shape != sd[k].shape
    ]
    problems = []
    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if keys:
            problems.append(f"{what}: {', '.join(keys[:8])}{f' (+{len(keys) - 8} more)' if len(keys) > 8 else ''}")
    # A tied model loading an untied checkpoint would keep one of the two matrices silently.
    _, model_ties = split_tied({k: _local(v) for k, v in expected.items()})
    for alias, name in model_ties.items():
        if alias in sd and name in sd and not torch.equal(sd[alias], sd[name]):
            problems.append(f"the model ties {alias} to {name} but the checkpoint has them different")
    if problems:
        raise ScratchLMError(f"checkpoint {path} does not fit the model: {'; '.join(problems)}")
    return sd


def _local(t: torch.Tensor) -> torch.Tensor:
    """A sharded model's DTensor -> this rank's shard (tied DTensors share it): what memory checks can read."""
    return t.to_local() if hasattr(t, "to_local") else t


def _load_weights(path: Path, model: nn.Module, aliases: dict[str, str], map_location) -> None:
    """Load model.safetensors into `model` strictly, with an error listing every mismatch."""
    unwrap_model(model).load_state_dict(_read_weights(path, model, aliases, map_location), strict=True)


# ---------------------------------------------------------------------------------------------
# save


def _sha256(path: Path, fsync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def _file_info(path: Path) -> dict[str, Any]:
    # fsync: the directory rename that publishes the checkpoint must not reach the disk before the data.
    return {"bytes": path.stat().st_size, "sha256": _sha256(path, fsync=True)}


def _jsonable(x: Any) -> Any:
    """Metrics as JSON: tensors / numpy scalars to numbers, NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.item() if x.numel() == 1 else x.tolist())
    if isinstance(x, (np.ndarray, np.generic)):
        return _jsonable(x.item() if x.size == 1 else x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class _WriteAll:
    """An unbuffered file for torch.save that writes each buffer whole or raises: torch's own file writer
    reports a full disk as "unexpected pos 704 vs 598"; through this the OSError (errno) survives as the
    context of torch's RuntimeError, for `named_write_errors`."""

    def __init__(self, f):
        self.f = f

    def write(self, data) -> int:
        view, done = memoryview(data), 0
        while done < len(view):
            n = self.f.write(view[done:])
            if not n:  # a regular file that takes no byte and raises nothing: out of space all the same
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += n
        return done

    def flush(self) -> None:
        pass


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: Any = None,
    data_state: Any = None,
    config_dict: dict | None = None,
    metrics: dict | None = None,
    keep_last: int = 2,
    is_best: bool = False,
) -> Path:
    """Write `run_dir/checkpoints/step_{step:07d}/` atomically, update the pointers, prune old steps.

    `schedule` is anything with `state_dict()` (or None); `data_state` any torch-saveable value
    of plain types (the loader's `state_dict()`). Keeps the `keep_last` newest step directories
    and the best one. Returns the step directory.
    """
    state = {
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "schedule": schedule.state_dict() if schedule is not None else None,
        "data": data_state,
        "rng": rng_state(),
    }
    return _write_checkpoint(
        run_dir, step, unwrap_model(model).state_dict(), state, config_dict, metrics, keep_last, is_best
    )


def save_train_state(
    run_dir: str | Path,
    state: TrainState,
    config_dict: dict | None = None,
    metrics: dict | None = None,
    keep_last: int = 2,
    is_best: bool = False,
) -> Path:
    """Save a whole `TrainState` at its step (same files as `save_checkpoint`); `metrics` (evaluation results)
    go to meta.json with the state's bookkeeping (best validation loss, noise-scale EMAs)."""
    sd = state.state_dict()
    rest = {k: sd[k] for k in ("optimizer", "schedule", "data", "rng")}
    metrics = {**(metrics or {}), **sd["metrics"]}
    return _write_checkpoint(run_dir, sd["step"], sd["model"], rest, config_dict, metrics, keep_last, is_best)


def _write_checkpoint(
    run_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    config_dict: dict | None,
    metrics: dict | None,
    keep_last: int,
    is_best: bool,
) -> Path:
    """model_state -> model.safetensors, state (optimizer, schedule, data, rng) -> state.pt, meta.json; pointers."""
    if keep_last < 1:
        raise ScratchLMError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(run_dir) / "checkpoints"
    for d in (Path(run_dir), root):
        if d.exists() and not d.is_dir():
            raise ScratchLMError(f"cannot save a checkpoint under {d}: it is a file, not a directory")
    name = step_dir_name(step)
    metrics = _jsonable(metrics or {})
    with atomic_dir(root / name, overwrite=True) as tmp:
        tensors, aliases = split_tied(model_state)
        with named_write_errors(root / name / MODEL_FILE):  # a full disk: one line naming the file
            save_file(tensors, tmp / MODEL_FILE, metadata={"format": CHECKPOINT_FORMAT, "aliases": json.dumps(aliases)})
        del tensors
        with named_write_errors(root / name / STATE_FILE), open(tmp / STATE_FILE, "wb", buffering=0) as f:
            torch.save(state, _WriteAll(f))
        meta = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "scratchlm_version": scratchlm.__version__,
            "torch_version": torch.__version__,
            "step": step,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "metrics": metrics,
            "tied": aliases,
            "files": {f: _file_info(tmp / f) for f in (MODEL_FILE, STATE_FILE)},
            "config": config_dict or {},
        }
        write_json(tmp / META_FILE, meta)
    pointer = {"step": step, "dir": name, "metrics": metrics}
    write_json(root / "latest.json", pointer)
    if is_best:
        write_json(root / "best.json", pointer)
    _prune(root, keep_last, keep=name)
    return root / name


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Step directories of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    dirs = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name)] if root.is_dir() else []
    return sorted(dirs, key=lambda p: int(_STEP_DIR.fullmatch(p.name).group(1)))


def _pointer_dir(root: Path, which: str) -> str | None:
    """The step directory name `which`.json names; None if the file is absent, unreadable or garbage (the
    readers then fall back to the newest intact checkpoint)."""
    path = root / f"{which}.json"
    if not path.is_file():
        return None
    try:
        pointer = read_json(path, f"{which}-checkpoint pointer")
    except ScratchLMError as e:
        log.warning("%s", e)
        return None
    name = pointer.get("dir") if isinstance(pointer, dict) else None
    return name if isinstance(name, str) and _STEP_DIR.fullmatch(name) else None


def _prune(root: Path, keep_last: int, keep: str) -> None:
    steps = list_checkpoints(root.parent)
    kept = {p.name for p in steps[-keep_last:]} | {keep, _pointer_dir(root, "best"), _pointer_dir(root, "latest")}
    for p in steps:
        if p.name not in kept:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.iterdir():
        if p.is_dir() and _STALE_TMP.fullmatch(p.name):
            if p.name.endswith(".old") and _recover_old(root, p):
                continue  # the only copy of a step whose replacement was cut short: put back, not deleted
            shutil.rmtree(p, ignore_errors=True)


def _recover_old(root: Path, old: Path) -> bool:
    """A replacement of step_N (io.atomic_dir) moves the old copy to `.step_N.*.old/dir`, then renames the new
    one in. Killed in between, step_N is missing and this is its only copy: move it back. True if it did."""
    name = old.name[1:].split(".")[0]  # ".step_0000600.abc.old" -> "step_0000600"
    target, saved = root / name, old / "dir"
    if target.exists() or not (saved / META_FILE).is_file():
        return False
    os.replace(saved, target)
    shutil.rmtree(old, ignore_errors=True)
    log.warning("recovered checkpoint %s from an interrupted replacement", target)
    return True


# ---------------------------------------------------------------------------------------------
# load


def find_checkpoint(path: str | Path, which: Literal["latest", "best"] = "latest") -> Path:
    """A step directory from itself, a run directory or its checkpoints/ directory (via `which`.json), or from
    a file: one of a step directory (meta.json, model.safetensors, state.pt) or a pointer (latest/best.json)."""
    path = Path(path)
    if not path.exists():
        raise ScratchLMError(f"checkpoint not found: {path}")
    if path.is_file():
        if path.name in (META_FILE, MODEL_FILE, STATE_FILE) and (path.parent / META_FILE).is_file():
            return path.parent
        if path.name in ("latest.json", "best.json"):
            return find_checkpoint(path.parent, path.stem)
        raise ScratchLMError(
            f"{path} is a file, not a checkpoint: give a run directory, a step directory (checkpoints/step_N), "
            f"or a file of one ({META_FILE}, {MODEL_FILE})"
        )
    if (path / META_FILE).is_file():
        return path
    for root in (path / "checkpoints", path):
        if not (root / f"{which}.json").is_file():
            continue
        name = _pointer_dir(root, which)
        if name is not None and not (root / name / META_FILE).is_file():
            for old in root.glob(f".{name}.*.old"):  # a replacement of it was interrupted
                _recover_old(root, old)
        if name is not None and (root / name / META_FILE).is_file():
            return root / name
        intact = [p for p in list_checkpoints(root.parent) if (p / META_FILE).is_file()]
        if not intact:
            raise ScratchLMError(
                f"{root / f'{which}.json'} points to {root / str(name)}, which is missing or incomplete, "
                "and no other checkpoint is intact"
            )
        log.warning("%s.json names no intact checkpoint: using the newest intact one, %s", which, intact[-1])
        return intact[-1]
    raise ScratchLMError(
        f"no checkpoint in {path}: expected a step directory (with {META_FILE}) or a run directory "
        f"with checkpoints/{which}.json"
    )


def read_checkpoint_meta(step_dir: Path, verify: bool = True) -> dict:
    """meta.json of a step directory, checked for format and version; with `verify`, file sizes and hashes."""
    meta = read_json(step_dir / META_FILE, "checkpoint meta.json")
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ScratchLMError(
            f"{step_dir} is not a scratchlm checkpoint ({META_FILE} has no format {CHECKPOINT_FORMAT!r})"
        )
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ScratchLMError(
            f"{step_dir} is checkpoint version {meta.get('version')}; this scratchlm reads version {CHECKPOINT_VERSION}"
        )
    for name, info in meta.get("files", {}).items():
        path = step_dir / name
        if not path.is_file():
            raise ScratchLMError(f"checkpoint file missing: {path}")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise ScratchLMError(
                f"checkpoint file {path} has {size} bytes, expected {info['bytes']}: truncated or replaced"
            )
        if verify and _sha256(path) != info["sha256"]:
            raise ScratchLMError(f"checkpoint file {path} is corrupt (sha256 differs from {META_FILE})")
    return meta


def load_weights(
    path: str | Path, model: nn.Module, map_location: str | torch.device = "cpu", verify: bool = True
) -> dict:
    """Load only the model weights of a checkpoint (for evaluation or inference). Returns its meta."""
    step_dir = find_checkpoint(path)
    meta = read_checkpoint_meta(step_dir, verify)
    _load_weights(step_dir / MODEL_FILE, model, meta.get("tied", {}), map_location)
    return meta


def _read_state(step_dir: Path, map_location) -> dict[str, Any]:
    try:
        return torch.load(step_dir / STATE_FILE, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ScratchLMError(f"cannot read {step_dir / STATE_FILE}: {e}") from None


def load_checkpoint(
    path_or_run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: Any = None,
    map_location: str | torch.device = "cpu",
    restore_rng: bool = False,
    which: Literal["latest", "best"] = "latest",
    verify: bool = True,
) -> dict:
    """Restore a checkpoint into `model` (and `optimizer`, `schedule`, the RNGs when given/asked).

    `path_or_run_dir`: a step directory, or a run directory (its `which` pointer). Returns
    {"step", "data_state", "metrics", "config", "path", "meta"}.
    """
    step_dir = find_checkpoint(path_or_run_dir, which)
    meta = read_checkpoint_meta(step_dir, verify)
    _load_weights(step_dir / MODEL_FILE, model, meta.get("tied", {}), map_location)
    state = _read_state(step_dir, map_location)
    for what, obj in (("optimizer", optimizer), ("schedule", schedule)):
        if obj is not None:
            restore_part(what, obj, state, str(step_dir))
    if restore_rng:
        set_rng_state(state["rng"])
    return {
        "step": meta["step"],
        "data_state": state.get("data"),
        "metrics": meta.get("metrics", {}),
        "config": meta.get("config", {}),
        "path": step_dir,
        "meta": meta,
    }


def load_train_state(
    path_or_run_dir: str | Path,
    state: TrainState,
    map_location: str | torch.device = "cpu",
    restore_rng: bool = True,
    which: Literal["latest", "best"] = "latest",
    verify: bool = True,
) -> dict:
    """Restore a whole `TrainState` (model, optimizer, schedule, data position, step, bookkeeping and, with
    `restore_rng`, the RNGs) from a checkpoint, including any written by `save_checkpoint`. Returns its meta."""
    step_dir = find_checkpoint(path_or_run_dir, which)
    meta = read_checkpoint_meta(step_dir, verify)
    weights = _read_weights(step_dir / MODEL_FILE, state.model, meta.get("tied", {}), map_location)
    saved = _read_state(step_dir, map_location)
    try:
        state.load_state_dict(
            {
                "step": meta["step"],
                "model": weights,
                "optimizer": saved.get("optimizer"),
                "schedule": saved.get("schedule"),
                "data": saved.get("data"),
                "rng": saved.get("rng") if restore_rng else None,
                "metrics": meta.get("metrics", {}),
            }
        )
    except ScratchLMError as e:
        raise ScratchLMError(f"{step_dir}: {e}") from None
    return meta


# ---------------------------------------------------------------------------------------------
# resuming


def _same_path(a: Any, b: Any) -> bool:
    try:
        return bool(a) and bool(b) and os.path.samefile(a, b)
    except OSError:
        return False


def check_resume_config(saved: dict, current: dict, allow: tuple[str, ...] = ()) -> None:
    """Error listing every config key that differs between a checkpoint and the resuming run.

    Keys in RESUME_ALLOWED (and `allow`, dotted) may differ: extending `steps`, intervals, the
    time limit, logging and the device. Paths of data files compare equal if they name the same file.
    """
    a, b = flatten(saved), flatten(current)
    allowed = set(RESUME_ALLOWED) | set(allow)
    missing = "<absent>"
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if key in allowed or va == vb or (key in _PATH_KEYS and _same_path(va, vb)):
            continue
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and float(va) == float(vb):
            continue
        diffs.append(f"{key} ({va!r} -> {vb!r})")
    if diffs:
        raise ScratchLMError(
            f"cannot resume: the config differs from the checkpoint's in {', '.join(diffs)}. Resume with the saved "
            f"values or start a new run (another out_dir); free to change: {', '.join(RESUME_ALLOWED)}"
        )
