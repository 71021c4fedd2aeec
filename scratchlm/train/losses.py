"""Training losses: small pure functions of tensors, and the `LossFn` objects `train_step` calls.

    total, parts = lm_loss(logits, targets, z_loss_coef=1e-4)       # parts: {"ce": ..., "z_loss": ...}
    total, parts = fused_lm_loss(h, model.head.weight, targets)     # the same cross-entropy, no logits

    loss_fn = build_loss(cfg)                      # chosen once, from TRAIN_LOSSES
    out = fwd_model(x, output=loss_fn.needs)       # "logits" (B, T, V) or "hidden" (B, T, D)
    total, parts = loss_fn(out, y, model)

A `LossFn` says which model output it reads (`needs`) and maps (that output, targets, plain model) to
(scalar loss, detached parts for logging). The model never decides how its loss is computed; the
alignment trainers (SFT / DPO / GRPO) bring their own LossFn to the same `train_step`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

import torch
from torch import Tensor, nn

from scratchlm.errors import ScratchLMError
from scratchlm.kernels import linear_cross_entropy
from scratchlm.model.primitives import CROSS_ENTROPY, cross_entropy
from scratchlm.train.data import IGNORE_INDEX

if TYPE_CHECKING:
    from scratchlm.train.config import TrainConfig


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
    logits: Tensor,
    targets: Tensor,
    z_loss_coef: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    ce_fn: Callable[..., Tensor] = cross_entropy,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Next-token cross-entropy (mean over targets != ignore_index) + z_loss_coef * z_loss.

    `ce_fn`: the project's own `cross_entropy` (default) or `torch_cross_entropy` (torch's fused
    log-softmax + NLL, same values; `model.ops = "torch"`).

    logits (B, T, V), targets (B, T). Returns (total, parts), the parts detached for logging
    ("ce" always, "z_loss" when its coefficient is non-zero, unscaled); the MoE auxiliary losses
    are the model's (`TransformerLM.aux_loss()`), added by `train_step`.
    """
    ce = ce_fn(logits, targets, ignore_index=ignore_index)
    parts = {"ce": ce.detach()}
    total = ce
    if z_loss_coef:
        z = z_loss(logits, targets != ignore_index)
        total = total + z_loss_coef * z
        parts["z_loss"] = z.detach()
    return total, parts


def fused_lm_loss(
    h: Tensor, head_weight: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, dict[str, Tensor]]:
    """The cross-entropy of logits h @ head_weight^T, computed chunk by chunk so the (tokens x V) logits
    never exist (kernels.linear_cross_entropy, as Liger Kernel's, Hsu et al. 2024). h (B, T, D),
    head_weight (V, D), targets (B, T). No z-loss: it would need every logit's logsumexp kept."""
    ce = linear_cross_entropy(h, head_weight, targets, ignore_index)
    return ce, {"ce": ce.detach()}


LOSSES: dict[str, Callable[..., Tensor | tuple[Tensor, dict[str, Tensor]]]] = {
    "cross_entropy": cross_entropy,
    "z_loss": z_loss,
    "lm": lm_loss,
    "fused_lm": fused_lm_loss,
}


# ---------------------------------------------------------------------------------------------
# LossFn: what train_step calls


class LossFn(Protocol):
    """`needs`: the model output the loss reads, passed as `model(x, output=needs)`: "logits" (B, T, V) or
    "hidden" (B, T, D), the final hidden states after the final norm.

    `loss_fn(out, targets, model) -> (loss, parts)`: out is that output, targets (B, T) (or whatever
    the trainer's batches carry as targets), model the plain (unwrapped) model, for its weights (e.g.
    `model.head.weight`). loss: a scalar tensor to minimise (mean over the micro-batch; train_step
    averages over micro-batches and adds `model.aux_loss()`); parts: detached scalars to log."""

    needs: Literal["logits", "hidden"]

    def __call__(self, out: Tensor, targets: Tensor, model: nn.Module) -> tuple[Tensor, dict[str, Tensor]]: ...


@dataclass(frozen=True)
class LMLoss:
    """Next-token cross-entropy on the logits, plus `z_loss_coef` x z-loss (`lm_loss`)."""

    needs: ClassVar[str] = "logits"
    z_loss_coef: float = 0.0
    ignore_index: int = IGNORE_INDEX
    ops: str = "torch"  # cross-entropy through torch's fused kernels, or "own" (the readable reference)

    def __call__(self, logits: Tensor, targets: Tensor, model: nn.Module | None = None):
        shard = getattr(model, "vocab_parallel", None)  # loss parallel: logits (B, T, V / tp) of this rank
        if shard is not None:
            ce = shard.cross_entropy(logits, targets, self.ignore_index)
            return ce, {"ce": ce.detach()}
        return lm_loss(logits, targets, self.z_loss_coef, self.ignore_index, CROSS_ENTROPY[self.ops])


@dataclass(frozen=True)
class FusedLMLoss:
    """The same cross-entropy from the hidden states and the head weight, without logits (`fused_lm_loss`)."""

    needs: ClassVar[str] = "hidden"
    ignore_index: int = IGNORE_INDEX

    def __call__(self, h: Tensor, targets: Tensor, model: nn.Module):
        return fused_lm_loss(h, model.head.weight, targets, self.ignore_index)


# name -> LossFn of a training config
TRAIN_LOSSES: dict[str, Callable[[TrainConfig], LossFn]] = {
    "lm": lambda cfg: LMLoss(cfg.optim.z_loss, ops=cfg.model.ops),
    "fused_lm": lambda cfg: FusedLMLoss(),
    "distill": lambda cfg: _distill_loss(cfg),  # logit distillation from cfg.distill (train/distill.py)
}


def _distill_loss(cfg: TrainConfig) -> LossFn:
    from scratchlm.train.distill import DistillLoss  # imported on use: distill.py imports this module

    return DistillLoss.from_config(cfg)


def build_loss(cfg: TrainConfig, name: str | None = None) -> LossFn:
    """The LossFn of `cfg`: `name`, else `cfg.loss`, else "fused_lm" when `model.fused_loss`, else "lm" (with
    `optim.z_loss`)."""
    name = name or cfg.loss or ("fused_lm" if cfg.model.fused_loss else "lm")
    if name not in TRAIN_LOSSES:
        raise ScratchLMError(f"unknown loss {name!r}: expected one of {', '.join(TRAIN_LOSSES)}")
    return TRAIN_LOSSES[name](cfg)
