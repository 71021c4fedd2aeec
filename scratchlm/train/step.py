"""One optimizer step, shared by pretraining, distillation and the alignment trainers (which differ in the loss).

    loss_fn = build_loss(cfg)                                   # train/losses.py
    result = train_step(fwd_model, [(x0, y0), (x1, y1)], loss_fn, optimizer, schedule, step=i,
                        precision="bf16", grad_clip=1.0)
    result.loss, result.grad_norm, result.lr

Per step: set the lr from the schedule; for each micro-batch (gradient accumulation): forward through
`fwd_model` (the model or its compile / DDP wrapper, `distributed.parallelize`) under autocast for
bf16 / fp16 (master weights stay fp32), `loss_fn`, + the model's auxiliary loss (MoE), backward of
loss / n_micro (scaled by the GradScaler for fp16); DDP all-reduces only after the last micro-batch
(`no_sync` before). Then unscale, clip the global grad norm, optimizer step. A non-finite loss makes
no update: the caller decides what to do (the Trainer stops the run).

Gradient statistics (the noise scale, train/noise_scale.py) come through `grad_hook`, not code here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from scratchlm.distributed.ddp import all_reduce_mean
from scratchlm.distributed.parallelize import unwrap_model
from scratchlm.train.losses import LossFn
from scratchlm.train.optim import clip_grad_norm

GradHook = Callable[[int | None, float], None]
"""`grad_hook(micro, factor)`: called after the backward of micro-batch `micro` for every micro-batch but the
last (this process's running sum, before any averaging over processes), and once with micro = None when
the step's gradient is complete (all micro-batches and processes, unscaled, before clipping). `factor` x
p.grad is then the gradient of the mean loss over the micro-batches so far (factor 1.0 for the last call).
Read the gradients from the plain model's parameters."""


@dataclass
class StepResult:
    loss: float  # mean over micro-batches (and processes) of loss + aux loss; non-finite: no update was made
    lr: float  # the first param group's lr for this step
    grad_norm: float | None  # global gradient norm before clipping; None without clipping (or no update)
    parts: dict[str, Tensor] = field(default_factory=dict)  # the loss's parts, mean over this process's micro-batches

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss)


def _sharded(model: nn.Module) -> bool:
    """FSDP2 / tensor parallel (DTensor parameters): every rank holds a loss to average, as under DDP."""
    from torch.distributed.tensor import DTensor

    return isinstance(getattr(model, "embed", None), nn.Module) and isinstance(model.embed.weight, DTensor)


def autocast_context(precision: str, device: torch.device):
    """Autocast to bf16 / fp16 for "bf16" / "fp16" (matmuls in low precision, weights fp32); nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_step(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    schedule,
    *,
    step: int,
    precision: str = "fp32",
    grad_clip: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
    grad_hook: GradHook | None = None,
) -> StepResult:
    """One optimizer step over the micro-batches `batches` [(inputs (B, T), targets), ...], on the model's device.

    model: what runs the forward (the plain model, or its compile / DDP wrapper). loss_fn: `LossFn`
    (losses.py), called as `loss_fn(model(x, output=loss_fn.needs), y, plain_model)`. schedule:
    anything with `step(i) -> lr` that sets the optimizer's lrs (None: keep them). scaler: a GradScaler
    (fp16); None = no scaling. grad_hook: see `GradHook`."""
    plain = unwrap_model(model)
    ddp = isinstance(model, DistributedDataParallel)
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    lr = schedule.step(step) if schedule is not None else optimizer.param_groups[0]["lr"]
    n = len(batches)
    loss_sum, parts_sum = 0.0, {}
    for micro, (x, y) in enumerate(batches):
        sync = micro == n - 1 or not ddp
        with contextlib.nullcontext() if sync else model.no_sync(), autocast_context(precision, x.device):
            out = model(x, output=loss_fn.needs)  # (B, T, V) logits or (B, T, D) hidden states
            loss, parts = loss_fn(out, y, plain)
            if hasattr(plain, "aux_loss"):
                loss = loss + plain.aux_loss()  # MoE load balancing / router z-loss of this forward
        scaler.scale(loss / n).backward()
        loss_sum += loss.detach()
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v
        if grad_hook is not None and micro < n - 1:
            grad_hook(micro, n / ((micro + 1) * scaler.get_scale()))
    loss_value = float(loss_sum) / n
    if ddp or _sharded(plain):  # the global mean, which equals the 1-process loss
        loss_value = all_reduce_mean(loss_value, x.device)
    parts_mean = {k: v / n for k, v in parts_sum.items()}
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_value, lr, None, parts_mean)
    scaler.unscale_(optimizer)
    if grad_hook is not None:
        grad_hook(None, 1.0)
    grad_norm = clip_grad_norm(plain.parameters(), grad_clip) if grad_clip > 0 else None
    scaler.step(optimizer)  # skipped by the scaler if fp16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_value, lr, None if grad_norm is None else float(grad_norm), parts_mean)
