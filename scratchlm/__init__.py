"""scratchlm: build language models from scratch and measure every design choice.

Sub-packages follow the pipeline (see README): tokenizer, data, model, kernels, train,
distributed, scaling, align, infer, serve, eval. Importing `scratchlm` does no work: each stage
imports its own dependencies (torch included) only when used.
"""

__version__ = "0.1.0"
