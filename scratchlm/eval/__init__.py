"""Evaluation: bits per byte (`bpb.py`), multiple-choice log-likelihood (`loglik.py`, `tasks.py`, `mmlu.py`),
generative GSM8K (`gsm8k.py`), the runner and report cards (`run.py`, `report.py`), the same MMLU
questions through lm-evaluation-harness for parity (`lm_eval_parity.py`)."""

from scratchlm.eval.bpb import bits_per_byte, documents
from scratchlm.eval.loglik import Scorer
from scratchlm.eval.tasks import MCExample, evaluate_mc

__all__ = ["MCExample", "Scorer", "bits_per_byte", "documents", "evaluate_mc"]
