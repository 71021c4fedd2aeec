"""Pipeline parallelism, the schedule written out: GPipe and 1F1B over point-to-point send / recv.

    stage_mod = pipeline_stage_module(model, stage, n_stages)              # from pipeline.py
    pipe = OwnPipeline(stage_mod, stage, n_stages, n_microbatches=4, kind="1f1b", batch_size=8, seq_len=T)
    loss = pipe.step(ids=ids if stage == 0 else None, targets=targets if last else None)  # None off the last
    optimizer.step(); optimizer.zero_grad()                                 # step() accumulates into .grad
    pipe.peak_in_flight                                                     # most activations stored at once

The readable twin of `pipeline.build_schedule` (torch.distributed.pipelining). A batch is cut into m
micro-batches. Stage s receives the activation of micro-batch i from s - 1 (shape (B/m, T, D), known
up front, so no shapes travel), runs its layers, sends the result to s + 1 and keeps the autograd graph
until the gradient comes back from s + 1; its backward sends the input's gradient to s - 1. The last
stage computes the loss (mean over the micro-batch) and backpropagates loss / m, so the summed gradients
equal one process on the whole batch. Sends are non-blocking (isend), receives blocking: a rank only ever
waits for data, and FIFO order per (sender, receiver) pair matches micro-batches without tags.

GPipe runs every forward, then every backward: m activations are alive at the peak. 1F1B warms up with
p - s - 1 forwards, then alternates one forward and one backward, then drains the backwards: stage s
holds at most min(m, p - s) activations, whatever m (m < p is allowed, unlike torch's 1F1B). Both have
the same bubble, (p - 1) / (m + p - 1) of the step when a forward and a backward take one tick each
(`timeline` below; B would be ~2F really).
1F1B, m = 4 (`print(timeline("1f1b", p, 4))`, '..' = idle):

    p=2  s0: F0 F1 .. B0 F2 B1 F3 B2 .. B3        p=3  s0: F0 F1 F2 .. .. B0 F3 B1 .. B2 .. B3
         s1: .. F0 B0 F1 B1 F2 B2 F3 B3 ..             s1: .. F0 F1 .. B0 F2 B1 F3 B2 .. B3 ..
                                                       s2: .. .. F0 B0 F1 B1 F2 B2 F3 B3 .. ..
    p=4  s0: F0 F1 F2 F3 .. .. .. B0 .. B1 .. B2 .. B3
         s1: .. F0 F1 F2 .. .. B0 F3 B1 .. B2 .. B3 ..
         s2: .. .. F0 F1 .. B0 F2 B1 F3 B2 .. B3 .. ..
         s3: .. .. .. F0 B0 F1 B1 F2 B2 F3 B3 .. .. ..
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from scratchlm.distributed.pipeline import SCHEDULES, PipelineStageModule, lm_loss
from scratchlm.errors import ScratchLMError


def schedule_actions(kind: str, stage: int, n_stages: int, m: int) -> list[tuple[str, int]]:
    """The ordered ("F" | "B", micro-batch) actions of one stage."""
    if kind not in SCHEDULES:
        raise ScratchLMError(f"pipeline: unknown schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")
    if m < 1:
        raise ScratchLMError(f"pipeline: n_microbatches must be >= 1, got {m}")
    if not 0 <= stage < n_stages:
        raise ScratchLMError(f"pipeline: stage {stage} outside 0..{n_stages - 1}")
    if kind == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    warmup = min(n_stages - stage - 1, m)  # forwards in flight before the first gradient can come back
    acts = [("F", i) for i in range(warmup)]
    for i in range(m - warmup):  # steady state: each backward frees the slot the next forward takes
        acts += [("F", warmup + i), ("B", i)]
    return acts + [("B", i) for i in range(m - warmup, m)]  # cool-down


def timeline(kind: str, n_stages: int, m: int) -> str:
    """ASCII timeline: a row per stage, a tick per forward or backward, each starting once its input is ready."""
    acts = [schedule_actions(kind, s, n_stages, m) for s in range(n_stages)]
    done: dict[tuple[str, int, int], int] = {}  # (op, micro-batch, stage) -> tick it finished at
    free, pos = [0] * n_stages, [0] * n_stages  # per stage: tick it is free from, next action
    while len(done) < 2 * m * n_stages:
        for s in range(n_stages):
            if pos[s] == len(acts[s]):
                continue
            op, i = acts[s][pos[s]]
            if op == "F":  # needs the activation from the previous stage
                dep = ("F", i, s - 1) if s > 0 else None
            else:  # needs the gradient from the next stage (the last stage: its own forward)
                dep = ("B", i, s + 1) if s < n_stages - 1 else ("F", i, s)
            if dep is None or dep in done:
                free[s] = max(free[s], done.get(dep, 0)) + 1
                done[(op, i, s)], pos[s] = free[s], pos[s] + 1
    end = max(done.values())
    rows = [[".."] * end for _ in range(n_stages)]
    for (op, i, s), t in done.items():
        rows[s][t - 1] = f"{op}{i}"
    return "\n".join(f"s{s}: " + " ".join(r) for s, r in enumerate(rows))


class OwnPipeline:
    """One stage's side of a GPipe / 1F1B step; every rank of the group calls `step` together."""

    def __init__(
        self,
        stage_mod: PipelineStageModule,
        stage: int,
        n_stages: int,
        n_microbatches: int,
        kind: str = "1f1b",
        *,
        batch_size: int,
        seq_len: int,
        loss_fn=lm_loss,
        group=None,
    ):
        schedule_actions(kind, stage, n_stages, n_microbatches)  # validates kind, m, stage
        if batch_size % n_microbatches:
            raise ScratchLMError(
                f"pipeline: batch of {batch_size} rows does not split into {n_microbatches} micro-batches"
            )
        if n_stages > 1 and (not dist.is_initialized() or dist.get_world_size(group) != n_stages):
            raise ScratchLMError(f"pipeline: {n_stages} stages need an initialised process group of {n_stages} ranks")
        self.mod, self.stage, self.p, self.m, self.kind = stage_mod, stage, n_stages, n_microbatches, kind
        self.loss_fn, self.group = loss_fn, group
        param = next(stage_mod.parameters())
        self.dtype, self.device = param.dtype, param.device
        self.shape = (batch_size // n_microbatches, seq_len, stage_mod._lm[0].config.d_model)  # (B/m, T, D)
        self.peak_in_flight = 0

    def _peer(self, s: int) -> int:
        return s if self.group is None else dist.get_global_rank(self.group, s)

    def _recv(self, src_stage: int) -> Tensor:
        buf = torch.empty(self.shape, dtype=self.dtype, device=self.device)  # (B/m, T, D)
        dist.recv(buf, self._peer(src_stage), group=self.group)
        return buf

    def _send(self, x: Tensor, dst_stage: int) -> None:
        x = x.detach().contiguous()
        self._sends.append((x, dist.isend(x, self._peer(dst_stage), group=self.group)))  # keep x alive until sent

    def step(self, ids: Tensor | None = None, targets: Tensor | None = None) -> Tensor | None:
        """Forward + backward of every micro-batch; gradients accumulate in .grad. The mean loss on the last stage."""
        first, last = self.stage == 0, self.stage == self.p - 1
        rows, seq = self.shape[0] * self.m, self.shape[1]
        for name, t, needed in (("ids", ids, first), ("targets", targets, last)):
            if needed and (t is None or tuple(t.shape) != (rows, seq)):
                got = None if t is None else tuple(t.shape)
                raise ScratchLMError(f"pipeline: stage {self.stage} needs {name} of shape ({rows}, {seq}), got {got}")
        ids_mb = ids.chunk(self.m) if first else None
        tgt_mb = targets.chunk(self.m) if last else None
        stash: dict[int, tuple[Tensor | None, Tensor]] = {}  # micro-batch -> (input, output or loss): the activations
        losses, self._sends, self.peak_in_flight = [], [], 0
        for op, i in schedule_actions(self.kind, self.stage, self.p, self.m):
            if op == "F":
                x = ids_mb[i] if first else self._recv(self.stage - 1).requires_grad_()
                out = self.mod(x)  # (B/m, T, D), or logits (B/m, T, V) on the last stage
                if last:
                    out = self.loss_fn(out, tgt_mb[i])
                    losses.append(out.detach())
                else:
                    self._send(out, self.stage + 1)
                stash[i] = (None if first else x, out)
                self.peak_in_flight = max(self.peak_in_flight, len(stash))
            else:
                x, out = stash.pop(i)  # backward frees this micro-batch's graph
                if last:
                    (out / self.m).backward()  # 1/m: the step's gradient is that of the batch mean
                else:
                    out.backward(self._recv(self.stage + 1))
                if not first:
                    self._send(x.grad, self.stage - 1)
        for _, work in self._sends:
            work.wait()
        self._sends = []
        return torch.stack(losses).mean() if last else None
