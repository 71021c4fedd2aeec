"""Pipeline parallel training steps for the Trainer (`parallel.pp > 1`): this rank's stage of the model, torch's
GPipe / 1F1B schedule over the step's micro-batches, and what a step needs across stages.

    pipe = PipelineRun(model, cfg, mesh, loss_fn)     # model: the whole TransformerLM, built the same on every rank
    result = pipe.step(batches, optimizer, schedule, step=i)   # batches: grad_accum x (inputs, targets)
    pipe.gather(optimizer)                            # every rank gets every stage's weights and optimizer state

A step's `grad_accum` micro-batches are the pipeline's micro-batches (1F1B needs at least pp of them); gradients
are the mean over them, so a step equals one process on the same rows. Only the last stage sees the loss: it
is broadcast over the pipeline for logging and for the non-finite check, which every stage then agrees on.
The gradient norm for clipping is summed over the stages (their parameters are disjoint: tied embeddings are
refused); with dp_replicate > 1 each stage's gradients are averaged over its replicas first (all-reduce).

Every rank holds the whole model (built identically, so it starts equal to one process) but updates only its
stage: pipeline parallel here splits compute and activations, not parameter memory. `gather` broadcasts each
stage's parameters and optimizer state from its owner so that evaluation (the whole model, on every rank) and
the usual single-file checkpoints see the trained weights; a checkpoint resumes under any layout.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from scratchlm.distributed.pipeline import build_schedule, pipeline_stage_module
from scratchlm.errors import ScratchLMError
from scratchlm.train.step import StepResult, autocast_context

if TYPE_CHECKING:
    from scratchlm.distributed.mesh import Mesh
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.losses import LossFn


def check_pipeline_config(cfg: TrainConfig) -> None:
    """What `scratchlm train` cannot run under pp > 1, refused in one line before any process group work."""
    p, m = cfg.parallel, cfg.model

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ScratchLMError(f"parallel.pp = {p.pp}: {msg}")

    need(
        p.dp_shard == 1 and p.tp == 1 and p.cp == 1,
        "combine pipeline stages with dp_replicate only (not dp_shard / tp / cp)",
    )
    need(not m.tie_embeddings, "tied embeddings cannot be split across stages (set model.tie_embeddings = false)")
    need(m.moe.num_experts == 0, "MoE auxiliary losses are not collected across stages")
    need(
        not m.fused_loss and cfg.loss in ("", "lm"),
        "the last stage computes the plain next-token loss (loss = lm, model.fused_loss = false)",
    )
    need(cfg.precision != "fp16", "fp16 loss scaling is not coordinated across stages: use bf16 or fp32")
    need(
        p.pp_schedule == "gpipe" or cfg.grad_accum >= p.pp,
        f"1F1B needs at least pp = {p.pp} micro-batches per step, got grad_accum = {cfg.grad_accum}",
    )


class PipelineRun:
    """This rank's pipeline stage and schedule, and the cross-stage parts of a training step."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, mesh: Mesh, loss_fn: LossFn):
        self.model, self.cfg, self.device = model, cfg, mesh.device
        self.group = mesh.sub_mesh("pp").get_group()
        dp = mesh.sub_mesh("dp_replicate")
        self.dp_group = dp.get_group() if dp is not None else None
        self.n_stages, self.stage = mesh.dims.pp, dist.get_rank(self.group)
        self.owners = [dist.get_global_rank(self.group, s) for s in range(self.n_stages)]  # global rank of stage s
        self.stage_mod = pipeline_stage_module(model, self.stage, self.n_stages)
        self.params = list(self.stage_mod.parameters())
        # which stage owns each parameter of the whole model (in the model's order: the optimizer's too)
        per = len(model.blocks) // self.n_stages
        self.param_stage = {}
        for name, p in model.named_parameters():
            part = name.split(".")
            if part[0] == "blocks":
                self.param_stage[p] = int(part[1]) // per
            else:
                self.param_stage[p] = 0 if part[0] in ("embed", "pos_embed") else self.n_stages - 1

        def stage_loss(logits, targets):  # mean over the micro-batch, as train_step's loss
            return loss_fn(logits, targets, model)[0]

        self.schedule = build_schedule(
            self.stage_mod, self.stage, self.n_stages, cfg.grad_accum, cfg.parallel.pp_schedule,
            stage_loss, self.group, mesh.device,
        )  # fmt: skip
        self.first, self.last = self.stage == 0, self.stage == self.n_stages - 1

    def step(self, batches, optimizer: torch.optim.Optimizer, schedule, *, step: int) -> StepResult:
        """One optimizer step over the micro-batches [(x, y), ...] (each (B, T)) through the pipeline."""
        lr = schedule.step(step) if schedule is not None else optimizer.param_groups[0]["lr"]
        x = torch.cat([b[0] for b in batches])  # (m * B, T): the schedule splits it back into m micro-batches
        y = torch.cat([b[1] for b in batches])
        losses: list = []
        with autocast_context(self.cfg.precision, self.device):
            if self.first:
                self.schedule.step(x)
            elif self.last:
                self.schedule.step(target=y, losses=losses)
            else:
                self.schedule.step()
        loss = torch.stack([t.detach().float() for t in losses]).mean() if self.last else torch.zeros(())
        loss = loss.to(self.device)
        dist.broadcast(loss, self.owners[-1], group=self.group)
        if self.dp_group is not None:
            dist.all_reduce(loss, group=self.dp_group)
            loss /= dist.get_world_size(self.dp_group)
            for p in self.params:
                if p.grad is not None:
                    dist.all_reduce(p.grad, group=self.dp_group)
                    p.grad /= dist.get_world_size(self.dp_group)
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            optimizer.zero_grad(set_to_none=True)
            return StepResult(loss_value, lr, None)
        grad_norm = self.clip(self.cfg.optim.grad_clip)
        optimizer.step()  # parameters of other stages have no gradient: the optimizer skips them
        optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_value, lr, grad_norm)

    def clip(self, max_norm: float) -> float | None:
        """Clip by the norm of the whole model's gradient (the stages' sums of squares added); returns it."""
        if max_norm <= 0:
            return None
        grads = [p.grad for p in self.params if p.grad is not None]
        sq = (
            torch.stack([g.float().pow(2).sum() for g in grads]).sum() if grads else torch.zeros((), device=self.device)
        )
        dist.all_reduce(sq, group=self.group)
        total = sq.sqrt()
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef)
        return float(total)

    @torch.no_grad()
    def gather(self, optimizer: torch.optim.Optimizer) -> None:
        """Every stage's parameters and optimizer state, broadcast from its owner to the whole pipeline."""
        for p, s in self.param_stage.items():
            dist.broadcast(p.data, self.owners[s], group=self.group)
        for s in range(self.n_stages):
            mine = [p for p, owner in self.param_stage.items() if owner == s]
            # the state's layout (keys, shapes, dtypes) first, then its tensors; Python numbers travel in the layout
            layout = [None]
            if s == self.stage:
                layout = [[_layout(optimizer.state.get(p, {})) for p in mine]]
            dist.broadcast_object_list(layout, self.owners[s], group=self.group)
            for p, spec in zip(mine, layout[0], strict=True):
                state = optimizer.state[p] if s == self.stage else {}
                for key, kind in spec.items():
                    if isinstance(kind, tuple):  # a tensor: (shape, dtype name)
                        t = (
                            state[key]
                            if s == self.stage
                            else torch.empty(kind[0], dtype=getattr(torch, kind[1]), device=p.device)
                        )
                        dist.broadcast(t, self.owners[s], group=self.group)
                        state[key] = t
                    else:
                        state[key] = kind
                if s != self.stage and state:
                    optimizer.state[p] = state


def _layout(state: dict) -> dict:
    """{key: (shape, dtype name) for tensors, the value itself for Python numbers} of one parameter's state."""
    return {
        k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) if isinstance(v, torch.Tensor) else v
        for k, v in state.items()
    }
