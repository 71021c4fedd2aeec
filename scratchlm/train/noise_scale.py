"""Gradient noise scale during training (McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model
of Large-Batch Training", appendix A.1), an estimate of the critical batch size.

For a batch of B examples the expected squared gradient norm is E|G_B|^2 = |G|^2 + tr(Sigma) / B,
where G is the true gradient and Sigma the per-example gradient covariance. Two batch sizes give two
equations, so from one small-batch norm and one big-batch norm per step:

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

Both are unbiased but very noisy per step; the paper averages each one over steps (an EMA here)
before taking the ratio B_simple = tr(Sigma) / |G|^2. In training the small batch is the first
micro-batch of gradient accumulation (on this process, before DDP averages anything) and the big
batch is the whole step's batch (all micro-batches, all processes), so it needs grad_accum >= 2.
`observe` reads both from `train_step`'s gradient hook:

    gns = NoiseScale(b_small_tokens, b_big_tokens)
    train_step(..., grad_hook=functools.partial(gns.observe, list(model.parameters())))

How to use it: B_simple (in tokens) approximates the critical batch size, where doubling the batch
stops halving the number of steps. Below it, bigger batches are almost free speed; far above it,
they waste compute. It grows as the loss falls, so measure it on a short run at the loss you care
about (e.g. the middle of training) and pick a batch near it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def grad_sq_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """Sum of squared gradient entries over `params` (None gradients skipped)."""
    grads = [p.grad.detach().float() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(sum(torch.linalg.vector_norm(g) ** 2 for g in grads))


class NoiseScale:
    """EMA estimates of |G|^2 and tr(Sigma) from (small, big) batch squared norms; batch sizes in tokens."""

    def __init__(self, b_small: int, b_big: int, ema: float = 0.95):
        if not 0 < b_small < b_big:
            raise ValueError(f"need 0 < b_small < b_big, got {b_small}, {b_big}")
        self.b_small, self.b_big, self.ema = b_small, b_big, ema
        self.g2 = self.trace = None  # EMAs (None until the first update)
        self.updates = 0
        self._sq_small: float | None = None  # this step's small-batch squared norm, until the big one comes

    def observe(self, params: list[torch.nn.Parameter], micro: int | None, factor: float) -> None:
        """`train_step`'s grad_hook (step.GradHook): the squared norm of micro-batch 0's gradient, then at the
        end of the step the whole step's; fp16 overflow steps (non-finite norms) are skipped."""
        if micro == 0:
            self._sq_small = grad_sq_norm(params) * factor**2
        elif micro is None and self._sq_small is not None:
            sq_small, sq_big = self._sq_small, grad_sq_norm(params)
            self._sq_small = None
            if math.isfinite(sq_small) and math.isfinite(sq_big):
                self.update(sq_small, sq_big)

    def update(self, sq_small: float, sq_big: float) -> dict[str, float]:
        g2 = (self.b_big * sq_big - self.b_small * sq_small) / (self.b_big - self.b_small)
        trace = (sq_small - sq_big) / (1 / self.b_small - 1 / self.b_big)
        if self.g2 is None:
            self.g2, self.trace = g2, trace
        else:
            self.g2 = self.ema * self.g2 + (1 - self.ema) * g2
            self.trace = self.ema * self.trace + (1 - self.ema) * trace
        self.updates += 1
        return self.value()

    def value(self) -> dict[str, float]:
        """{'gns': B_simple in tokens (nan until |G|^2 > 0), 'gns_g2': |G|^2, 'gns_trace': tr(Sigma)}."""
        if self.g2 is None:
            return {}
        b = self.trace / self.g2 if self.g2 > 0 else float("nan")
        return {"gns": b, "gns_g2": self.g2, "gns_trace": self.trace}

    def state_dict(self) -> dict:
        return {"g2": self.g2, "trace": self.trace, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.g2, self.trace, self.updates = state["g2"], state["trace"], state["updates"]
