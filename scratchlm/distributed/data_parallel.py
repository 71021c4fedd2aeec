"""Data parallel written in the project: gradients all-reduced while backward is still running.

    model = DataParallel(net)                        # per-parameter all-reduce, launched by each grad's hook
    model = DataParallel(net, bucket_size_mb=25)     # bucketed: one all-reduce per full bucket
    for x, y in batches:                             # this rank's slice of the global batch
        with model.no_sync():                        # gradient accumulation: micro-batches but the last
            loss_fn(model(x0), y0).backward()
        loss_fn(model(x1), y1).backward()            # hooks launch async all-reduces as grads appear
        model.finish_gradient_synchronization()      # wait for them: grads now hold the global mean
        opt.step(); opt.zero_grad()

    torchrun --nproc_per_node 2 my_script.py         # any script that builds a process group and the above

Construction broadcasts rank 0's parameters and buffers, so every rank starts from the same model.
Each parameter's `register_post_accumulate_grad_hook` fires once its gradient is complete; the hook
divides it by the world size and launches an async SUM all-reduce (per-parameter mode), or marks it
ready in its bucket and, when the bucket is full, flattens the bucket's grads into one buffer and
launches one all-reduce for it. Buckets hold parameters in reverse registration order (roughly the
order backward produces grads) and are launched strictly in index order, so every rank issues the
same collectives in the same order even when grads arrive in a different order.

Parameters that get no gradient: at `finish_gradient_synchronization()` every bucket not yet launched
is launched with zeros for its missing grads (no rank waits forever for a hook that never fires). A
parameter without a local grad keeps `grad=None` (like a single process) unless `find_unused_parameters`
is set, in which case one small all-reduce of a used-flag per parameter decides: used by some rank ->
the averaged grad; used by none -> None. Without the flag the ranks must use the same parameters.

`overlap=False` launches all collectives after backward (the baseline the overlap is measured against,
benchmarks/bench_ddp.py). Tested equal to one process on the global batch (tests/distributed/).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from scratchlm.errors import ScratchLMError


class _Bucket:
    """Parameters reduced by one collective; `flat` only in bucketed mode."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.ready: set[int] = set()  # indexes into params with a complete local grad
        self.flat: torch.Tensor | None = None
        self.work = None

    @property
    def full(self) -> bool:
        return len(self.ready) == len(self.params)


class DataParallel(nn.Module):
    """Own DDP around any module: `bucket_size_mb=None` -> one all-reduce per parameter."""

    def __init__(
        self,
        module: nn.Module,
        bucket_size_mb: float | None = None,
        *,
        overlap: bool = True,
        find_unused_parameters: bool = False,
        process_group: dist.ProcessGroup | None = None,
    ):
        super().__init__()
        if not dist.is_initialized():
            raise ScratchLMError("DataParallel needs a process group: call torch.distributed.init_process_group")
        if bucket_size_mb is not None and bucket_size_mb <= 0:
            raise ScratchLMError(f"bucket_size_mb must be positive, got {bucket_size_mb}")
        self.module = module
        self.group = process_group
        self.world = dist.get_world_size(process_group)
        self.overlap = overlap
        self.find_unused = find_unused_parameters
        self.bucketed = bucket_size_mb is not None
        self._sync = True
        src = dist.get_global_rank(process_group, 0) if process_group is not None else 0
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=src, group=process_group)
        self.params = [p for p in module.parameters() if p.requires_grad]  # deduplicated: tied weights once
        self.buckets = self._make_buckets(bucket_size_mb)
        self._where = {id(p): (b, i) for b, bucket in enumerate(self.buckets) for i, p in enumerate(bucket.params)}
        self._next = 0  # first bucket not launched yet: launches go in index order on every rank
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]

    def _make_buckets(self, size_mb: float | None) -> list[_Bucket]:
        order = self.params[::-1]  # backward meets the last-registered parameters first
        if size_mb is None:
            return [_Bucket([p]) for p in order]
        cap, buckets, cur, used = size_mb * 2**20, [], [], 0.0
        for p in order:
            nbytes = p.numel() * p.element_size()
            if cur and (used + nbytes > cap or p.dtype != cur[0].dtype or p.device != cur[0].device):
                buckets.append(_Bucket(cur))
                cur, used = [], 0.0
            cur.append(p)
            used += nbytes
        return buckets + ([_Bucket(cur)] if cur else [])

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextmanager
    def no_sync(self):
        """Backward passes inside only accumulate local grads; the next one outside reduces the sum."""
        prev, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = prev

    def _on_grad(self, p: nn.Parameter) -> None:
        if not self._sync:
            return
        b, i = self._where[id(p)]
        self.buckets[b].ready.add(i)
        if self.overlap:
            self._launch_ready()

    def _launch_ready(self, force: bool = False) -> None:
        """Launch buckets in index order while they are full (all of them when `force`)."""
        while self._next < len(self.buckets) and (force or self.buckets[self._next].full):
            self._launch(self.buckets[self._next])
            self._next += 1

    def _launch(self, bucket: _Bucket) -> None:
        if not self.bucketed:
            p = bucket.params[0]
            if p.grad is None:  # no grad here: reduce zeros so the other ranks' collective has a partner
                bucket.flat = torch.zeros_like(p)
                tensor = bucket.flat
            else:
                tensor = p.grad
        else:
            parts = [p.grad if p.grad is not None else torch.zeros_like(p) for p in bucket.params]
            bucket.flat = torch.cat([g.reshape(-1) for g in parts])
            tensor = bucket.flat
        tensor.div_(self.world)  # pre-divide: SUM of grad / world is the mean, with no overflow in low precision
        bucket.work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group, async_op=True)

    def finish_gradient_synchronization(self) -> None:
        """Wait for every all-reduce (launching the ones whose parameters got no grad); call before opt.step()."""
        if not self._sync:
            return
        self._launch_ready(force=True)
        used = self._global_use() if self.find_unused else None
        for bucket in self.buckets:
            bucket.work.wait()
            if bucket.flat is not None:
                off = 0
                for p in bucket.params:
                    n = p.numel()
                    if p.grad is not None:
                        p.grad.copy_(bucket.flat[off : off + n].view_as(p))
                    elif used is not None and used[id(p)]:
                        p.grad = bucket.flat[off : off + n].view_as(p).clone()
                    off += n
            elif used is not None and not used[id(bucket.params[0])]:
                bucket.params[0].grad = None
            bucket.ready.clear()
            bucket.flat = bucket.work = None
        self._next = 0

    def _global_use(self) -> dict[int, bool]:
        flags = torch.tensor([p.grad is not None for p in self.params], dtype=torch.int32)
        dist.all_reduce(flags, group=self.group)
        return {id(p): bool(f) for p, f in zip(self.params, flags.tolist(), strict=True)}
