"""Pipeline parallelism: a TransformerLM split by layer into stages, run by torch's GPipe / 1F1B schedules.

    stage_mod = pipeline_stage_module(model, stage, n_stages)   # this rank's layers (embedding first, head last)
    schedule = build_schedule(stage_mod, stage, n_stages, n_microbatches=4, kind="1f1b", loss_fn=lm_loss)
    schedule.step(ids, target=targets) on stage 0 / the last stage (middle stages: schedule.step())

Stage s holds blocks [s * L/p, (s+1) * L/p); stage 0 also the embedding (and learned positions), the last
stage the final norm and the head, so the loss is computed there. Each stage computes the step context
(positions, RoPE tables) itself from the sequence length: it has no parameters. Tied embeddings are
refused (the embedding and the head live on different stages). Gradients of the micro-batches are summed
and scaled by 1 / n_microbatches (torch's `scale_grads`), so with a mean loss per micro-batch a step equals
one process on the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.errors import ScratchLMError

SCHEDULES = ("gpipe", "1f1b")


class PipelineStageModule(nn.Module):
    """Blocks [lo, hi) of a TransformerLM, with the embedding on the first stage and norm + head on the last."""

    def __init__(self, model: nn.Module, stage: int, n_stages: int):
        super().__init__()
        n_layers = len(model.blocks)
        if n_layers % n_stages:
            raise ScratchLMError(f"pipeline: {n_layers} layers do not split into {n_stages} equal stages")
        if model.config.tie_embeddings and n_stages > 1:
            raise ScratchLMError("pipeline: tied embeddings cannot be split across stages (set tie_embeddings: false)")
        per = n_layers // n_stages
        self.first, self.last = stage == 0, stage == n_stages - 1
        self._lm = [model]  # for step_context (RoPE tables): a list so its parameters are not registered here
        self.embed = model.embed if self.first else None
        self.pos_embed = model.pos_embed if self.first else None
        self.blocks = nn.ModuleDict({str(i): model.blocks[str(i)] for i in range(stage * per, (stage + 1) * per)})
        self.norm = model.norm if self.last else None
        self.head = model.head if self.last else None

    def forward(self, x: Tensor) -> Tensor:
        lm = self._lm[0]
        ctx = lm.step_context(x, None, None)  # x: ids (B, T) on stage 0, hidden (B, T, D) later: T is dim 1
        if self.first:
            x = self.embed(x)  # (B, T, D)
            if self.pos_embed is not None:
                x = x + self.pos_embed(ctx.positions).to(x.dtype)
            x = F.dropout(x, lm.config.dropout_embd, self.training)
        for block in self.blocks.values():
            x = block(x, ctx)
        if self.last:
            x = self.head(self.norm(x))  # (B, T, V)
        return x


def pipeline_stage_module(model: nn.Module, stage: int, n_stages: int) -> PipelineStageModule:
    return PipelineStageModule(model, stage, n_stages)


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy of one micro-batch."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def build_schedule(
    stage_mod: nn.Module,
    stage: int,
    n_stages: int,
    n_microbatches: int,
    kind: str = "1f1b",
    loss_fn=lm_loss,
    group=None,
    device: torch.device | str = "cpu",
):
    """torch's PipelineStage for this rank and a GPipe or 1F1B schedule over `n_microbatches`."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    if kind not in SCHEDULES:
        raise ScratchLMError(f"pipeline: unknown schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")
    if n_microbatches < 1:
        raise ScratchLMError(f"pipeline: n_microbatches must be >= 1, got {n_microbatches}")
    if kind == "1f1b" and n_microbatches < n_stages:
        raise ScratchLMError(f"pipeline: 1F1B needs n_microbatches >= stages, got {n_microbatches} < {n_stages}")
    pipe_stage = PipelineStage(stage_mod, stage, n_stages, torch.device(device), group=group)
    cls = ScheduleGPipe if kind == "gpipe" else Schedule1F1B
    return cls(pipe_stage, n_microbatches, loss_fn=loss_fn)
