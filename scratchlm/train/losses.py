"""Training losses: small pure functions of tensors.

total, parts = lm_loss(logits, targets, z_loss_coef=1e-4)   # parts: {"ce": ..., "z_loss": ...}
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scratchlm.model.primitives import cross_entropy


def z_loss(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """mean(logsumexp(logits)^2) over positions (those where `mask` is True), in fp32.

    PaLM (Chowdhery et al. 2022, section 5) adds 1e-4 times this to the loss: it pulls the
    softmax normaliser log Z towards 0, which keeps the output logits from drifting and stabilises
    training. logits (..., V), mask (...) bool.
    """
    lse = torch.logsumexp(logits.float(), dim=-1)  # (...)
    sq = lse.square()
    if mask is None:
        return sq.mean()
    return (sq * mask).sum() / mask.sum().clamp_min(1)


def lm_loss(
    logits: Tensor, targets: Tensor, z_loss_coef: float = 0.0, ignore_index: int = -100
) -> tuple[Tensor, dict[str, Tensor]]:
    """Next-token cross-entropy (mean over targets != ignore_index) + z_loss_coef * z_loss.

    logits (B, T, V), targets (B, T). Returns (total, parts), the parts detached for logging
    ("ce" always, "z_loss" when its coefficient is non-zero, unscaled); the MoE auxiliary losses
    are the model's (`TransformerLM.aux_loss()`), added by the caller.
    """
    ce = cross_entropy(logits, targets, ignore_index=ignore_index)
    parts = {"ce": ce.detach()}
    total = ce
    if z_loss_coef:
        z = z_loss(logits, targets != ignore_index)
        total = total + z_loss_coef * z
        parts["z_loss"] = z.detach()
    return total, parts


LOSSES: dict[str, Callable[..., Tensor | tuple[Tensor, dict[str, Tensor]]]] = {
    "cross_entropy": cross_entropy,
    "z_loss": z_loss,
    "lm": lm_loss,
}
