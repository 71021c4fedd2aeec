"""Evaluation: bits per byte (`bpb.py`), multiple-choice log-likelihood (`loglik.py`, `tasks.py`, `mmlu.py`;
HellaSwag/ARC/PIQA files and downloads in `mc_tasks.py`), generative GSM8K (`gsm8k.py`), custom TOML tasks
(`custom.py`), the runner and report cards (`run.py`, `report.py`), a training run's checkpoints against its
validation curves (`checkpoints.py`), the same MMLU questions through lm-evaluation-harness for parity
(`lm_eval_parity.py`) and a scratchlm model as an lm-eval `LM` (`lm_eval_adapter.py`, needs lm-eval)."""

import importlib

# Lazy, so `scratchlm --help` (which builds the eval sub-commands) does not import torch.
_EXPORTS = {
    "bits_per_byte": "scratchlm.eval.bpb",
    "documents": "scratchlm.eval.bpb",
    "Scorer": "scratchlm.eval.loglik",
    "MCExample": "scratchlm.eval.tasks",
    "evaluate_mc": "scratchlm.eval.tasks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scratchlm.eval' has no attribute {name!r}")
