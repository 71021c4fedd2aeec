"""Evaluation: bits per byte (`bpb.py`), multiple-choice log-likelihood (`loglik.py`, `tasks.py`, `mmlu.py`;
HellaSwag/ARC/PIQA files and downloads in `mc_tasks.py`), generative GSM8K (`gsm8k.py`), custom TOML tasks
(`custom.py`), the runner and report cards (`run.py`, `report.py`), a training run's checkpoints against its
validation curves (`checkpoints.py`), the same MMLU questions through lm-evaluation-harness for parity
(`lm_eval_parity.py`) and a scratchlm model as an lm-eval `LM` (`lm_eval_adapter.py`, needs lm-eval)."""

from scratchlm.eval.bpb import bits_per_byte, documents
from scratchlm.eval.loglik import Scorer
from scratchlm.eval.tasks import MCExample, evaluate_mc

__all__ = ["MCExample", "Scorer", "bits_per_byte", "documents", "evaluate_mc"]
