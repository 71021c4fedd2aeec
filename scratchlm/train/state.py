"""TrainState: everything a training run must save to continue exactly where it stopped.

    state = TrainState(model, optimizer, schedule, loader, noise_scale=gns)
    save_train_state(run_dir, state, to_dict(cfg), {"val_loss": 3.2})    # train/checkpoint.py
    load_train_state(run_dir, state, map_location=device)               # latest checkpoint, RNGs too

`state_dict()` gathers the pieces (model weights, optimizer, schedule, data position, RNG states,
step, best validation loss, noise-scale EMAs) as one dict; `load_state_dict()` puts them back.
checkpoint.py maps that dict to the files of a step directory (weights -> model.safetensors;
optimizer, schedule, data, RNG -> state.pt; step and the bookkeeping metrics -> meta.json), the layout
`save_checkpoint` has always written, so older checkpoints restore through this path too.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from scratchlm.distributed.parallelize import unwrap_model
from scratchlm.errors import ScratchLMError
from scratchlm.train.noise_scale import NoiseScale

# Keys of the checkpoint's meta.json "metrics" that are training state, not evaluation results.
BEST_KEY, GNS_KEY = "best_val_loss", "gns_state"


@dataclass
class TrainState:
    model: nn.Module  # the plain model (wrappers are looked through)
    optimizer: torch.optim.Optimizer
    schedule: Any  # state_dict / load_state_dict (schedules.Schedule)
    loader: Any  # the training batches' position: state_dict / load_state_dict (data.RandomWindows)
    step: int = 0  # optimizer steps done
    best_val_loss: float = math.inf
    noise_scale: NoiseScale | None = None  # the gradient noise scale's EMAs, when measured

    def bookkeeping(self) -> dict[str, Any]:
        """The small part of the state saved with the metrics in meta.json (as the training loop always did)."""
        return {BEST_KEY: self.best_val_loss, GNS_KEY: self.noise_scale.state_dict() if self.noise_scale else None}

    def state_dict(self, rng: bool = True) -> dict[str, Any]:
        """{"step", "model", "optimizer", "schedule", "data", "rng" (when `rng`), "metrics": bookkeeping()}."""
        out = {
            "step": self.step,
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "data": self.loader.state_dict(),
            "metrics": self.bookkeeping(),
        }
        if rng:
            out["rng"] = rng_state()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state` has ("model" and "rng" are optional: checkpoint.py loads checked weights itself)."""
        if "model" in state:
            unwrap_model(self.model).load_state_dict(state["model"], strict=True)
        for what, obj in (("optimizer", self.optimizer), ("schedule", self.schedule), ("data", self.loader)):
            restore_part(what, obj, state, "the checkpoint")
        if state.get("rng") is not None:
            set_rng_state(state["rng"])
        self.step = state["step"]
        metrics = state.get("metrics") or {}
        best = metrics.get(BEST_KEY)
        self.best_val_loss = math.inf if best is None else best  # saved as None when no eval had run yet
        if self.noise_scale is not None and metrics.get(GNS_KEY):
            self.noise_scale.load_state_dict(metrics[GNS_KEY])


# ---------------------------------------------------------------------------------------------
# RNG states


def rng_state() -> dict[str, Any]:
    """Python `random`, numpy's global generator, torch CPU and (if present) every CUDA device."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {  # plain types and tensors only, so state.pt loads with torch.load(weights_only=True)
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def restore_part(what: str, obj: Any, state: dict[str, Any], where: str) -> None:
    """obj.load_state_dict(state[what]), or a ScratchLMError naming `what` and `where` (missing or not fitting)."""
    if state.get(what) is None:
        raise ScratchLMError(f"{where} has no {what} state to restore (it was saved without one)")
    try:
        obj.load_state_dict(state[what])
    except (ValueError, KeyError, RuntimeError) as e:
        raise ScratchLMError(f"the {what} state of {where} does not fit this {what}: {e}") from None
