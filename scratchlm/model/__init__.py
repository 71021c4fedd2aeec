"""The Transformer family: every architectural choice a config switch.

from scratchlm.model import ModelConfig, TransformerLM
model = TransformerLM(ModelConfig(d_model=256, n_layers=4, n_heads=4, mlp="swiglu"))
logits = model(input_ids)  # (B, T) -> (B, T, V)
"""

from scratchlm.model.config import MLAConfig, ModelConfig, MoEConfig, SSMConfig
from scratchlm.model.transformer import ModelCache, TransformerLM

__all__ = ["MLAConfig", "ModelCache", "ModelConfig", "MoEConfig", "SSMConfig", "TransformerLM"]
