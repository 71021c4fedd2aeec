"""The Transformer family: every architectural choice a config switch.

    from scratchlm.model import ModelConfig, TransformerLM
    model = TransformerLM(ModelConfig(d_model=256, n_layers=4, n_heads=4, mlp="swiglu"))
    logits = model(input_ids)  # (B, T) -> (B, T, V)

Files, leaf to root: primitives, norms, positions (RoPE, learned, sinusoidal), attend (the attention
callable), cache (generation state), context (the per-step StepContext), attention / mla /
linear_attention / ssm (sequence mixers), mlp / moe (feed-forward), builders, block, roles (parameter
roles), transformer; accounting, generate, hf (Hugging Face import/export).

Names are imported on first use, so `scratchlm.model.config` (and the CLI) load without torch.
"""

import importlib

_EXPORTS = {
    "MLAConfig": "scratchlm.model.config",
    "ModelConfig": "scratchlm.model.config",
    "MoEConfig": "scratchlm.model.config",
    "SSMConfig": "scratchlm.model.config",
    "ModelCache": "scratchlm.model.cache",
    "StepContext": "scratchlm.model.context",
    # building blocks
    "Linear": "scratchlm.model.primitives",
    "Embedding": "scratchlm.model.primitives",
    "ScaledEmbedding": "scratchlm.model.primitives",
    "RMSNorm": "scratchlm.model.norms",
    "LayerNorm": "scratchlm.model.norms",
    "RotaryEmbedding": "scratchlm.model.positions",
    "apply_rotary": "scratchlm.model.positions",
    "CausalSelfAttention": "scratchlm.model.attention",
    "MultiHeadLatentAttention": "scratchlm.model.mla",
    "LinearAttention": "scratchlm.model.linear_attention",
    "S4DMixer": "scratchlm.model.ssm",
    "Block": "scratchlm.model.block",
    "DenseMLP": "scratchlm.model.mlp",
    "GatedMLP": "scratchlm.model.mlp",
    "MoE": "scratchlm.model.moe",
    "build_attend": "scratchlm.model.attend",
    "generate": "scratchlm.model.generate",
    "TransformerLM": "scratchlm.model.transformer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scratchlm.model' has no attribute {name!r}")
