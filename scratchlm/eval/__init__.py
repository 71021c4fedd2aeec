"""Evaluation: bits per byte on raw text (`bpb.py`)."""

from scratchlm.eval.bpb import bits_per_byte, documents

__all__ = ["bits_per_byte", "documents"]
