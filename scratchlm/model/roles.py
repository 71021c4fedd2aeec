"""Parameter roles: what each parameter is, decided by the model's own module types.

    roles = model.param_roles()      # {"blocks.0.attn.f.q_proj.weight": "matrix", "embed.weight": "embedding", ...}

Roles (each parameter has exactly one; tied weights appear once, under their first name):
- "matrix": the weight of a linear map applied to activations inside the network (`Linear.weight`);
- "expert": a MoE expert's stacked weights (E, out, in): E independent matrices;
- "embedding": a lookup table (token embedding, learned positions);
- "head": the output classifier (when not tied to the embedding; tied, it is the embedding);
- "norm_bias": norm gains and biases, every bias (including the (E, F) expert biases);
- "ssm": the S4D system parameters (log_dt, log_A_real, A_imag, C, D): dynamics, not feature maps.

The optimizer maps a role to an algorithm and a weight decay (`scratchlm.train.optim`), the
accounting counts parameters per role (`accounting.role_counts`): neither needs to know module types.
"""

from __future__ import annotations

from torch import nn

from scratchlm.model.moe import GroupedExperts
from scratchlm.model.norms import Norm
from scratchlm.model.positions import LearnedPositions
from scratchlm.model.ssm import DiagonalSSM

ROLES = ("matrix", "expert", "embedding", "head", "norm_bias", "ssm")
OTHER = "other"  # a parameter of a module type this file does not know (outside TransformerLM)


def _role(module: nn.Module, name: str) -> str:
    if isinstance(module, (nn.Embedding, LearnedPositions)):
        return "embedding"
    if isinstance(module, (Norm, nn.LayerNorm, nn.RMSNorm)) or name == "bias" or name.startswith("b_"):
        return "norm_bias"
    if isinstance(module, nn.Linear):  # scratchlm's Linear is an nn.Linear
        return "matrix"
    if isinstance(module, GroupedExperts):
        return "expert"
    if isinstance(module, DiagonalSSM):
        return "ssm"
    return OTHER


def param_roles(model: nn.Module) -> dict[str, str]:
    """{parameter name: role} for every parameter of `model` (tied ones once). The root's `head`
    module, if any, holds the "head"; unknown module types give OTHER."""
    head = getattr(model, "head", None)
    roles: dict[str, str] = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{name}" if mod_name else name
            roles[full] = "head" if module is head and name == "weight" else _role(module, name)
    return roles
