"""Cheaper models, applied from outside by module swaps: weight-only quantisation (`quant.py`: int8 per
channel, int4 group-wise, round to nearest; `gptq.py`: GPTQ; `awq.py`: AWQ), unstructured and 2:4 pruning (`prune.py`)
and structured pruning into a smaller config (`structured.py`). Distillation lives in `train/distill.py`.
Nothing heavy is imported here."""

import importlib

_EXPORTS = {
    **dict.fromkeys(["QuantConfig", "quantize_model", "Int8Linear", "Int4Linear", "model_bytes"], "quant"),
    **dict.fromkeys(
        [
            "magnitude_prune",
            "semi_structured_24",
            "apply_masks",
            "keep_masks",
            "sparsity_report",
            "to_semi_structured",
            "prunable_linears",
        ],
        "prune",
    ),  # fmt: skip
    **dict.fromkeys(["prune_structured", "importance", "calibration_tokens", "Importance", "shrink"], "structured"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"scratchlm.compress.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'scratchlm.compress' has no attribute {name!r}")
