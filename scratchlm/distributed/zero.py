"""ZeRO stage 1: optimizer states sharded across the data-parallel ranks, for any torch.optim.Optimizer class.

    dp = DataParallel(model)                                   # grads averaged over ranks (data_parallel.py)
    opt = ShardedOptimizer(model.parameters(), torch.optim.AdamW, lr=3e-4, weight_decay=0.1)
    loss.backward(); dp.finish_gradient_synchronization()
    opt.step(); opt.zero_grad()                                # steps this rank's shard, then shares the updates

    torchrun --nproc_per_node 4 my_script.py                   # each rank keeps ~1/4 of the optimizer states

Each parameter has one owner rank (greedy, largest first, onto the least-loaded rank by numel: every
rank computes the same assignment). A rank builds the inner optimizer over the parameters it owns only,
so its optimizer states (AdamW: exp_avg and exp_avg_sq, 8 bytes per fp32 parameter) are ~1/N of the
unsharded ones: the ZeRO paper's K x Psi / N_d (Rajbhandari et al. 2020, K = 12 for mixed-precision
Adam with fp32 master weights; K = 8 here, fp32 parameters are the master weights). `step()` steps the
owned shard, then every owner broadcasts its updated parameters, flattened into one buffer per
(owner, dtype): N broadcasts of Psi bytes in all, per step.

ZeRO-2 (`stage=2`, without DataParallel: grads stay local through backward): `step()` first reduces each
owner's gradients to it (one SUM reduce per (owner, dtype), then / N) and the other ranks set those
grads to None, so each rank ends the step holding ~1/N of the gradients as well. The reduces run after
backward (no overlap), Psi x 4 bytes of payload like DDP's all-reduce but 1 x instead of 2 (N - 1) / N
on the ring.

Hyperparameters live in `param_groups` as usual (schedulers write them there); `step()` copies them into
the inner optimizer. `state_dict()` is collective: it gathers every shard's state into the unsharded
optimizer's layout (param indices over all parameters), so it loads into the plain optimizer or into a
ShardedOptimizer over any number of ranks; `load_state_dict` keeps the owned part.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from scratchlm.errors import ScratchLMError


class ShardedOptimizer(torch.optim.Optimizer):
    def __init__(
        self, params, optimizer_cls: type[torch.optim.Optimizer], process_group=None, stage: int = 1, **kwargs: Any
    ):
        if stage not in (1, 2):
            raise ScratchLMError(f"ShardedOptimizer stage must be 1 or 2, got {stage}")
        self.stage = stage
        if not dist.is_initialized():
            raise ScratchLMError("ShardedOptimizer needs a process group: call torch.distributed.init_process_group")
        self.group = process_group
        self.world = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        self.optimizer_cls, self.kwargs = optimizer_cls, kwargs
        self.owner: dict[torch.Tensor, int] = {}
        self.load = [0] * self.world  # numel owned per rank
        self.inner: torch.optim.Optimizer | None = None
        self._inner_group: dict[int, int] = {}  # outer group index -> inner group index (groups with owned params)
        # the inner class's full defaults (betas, eps, ...), so param_groups and state_dict match the unsharded one
        defaults = optimizer_cls([torch.zeros(1, requires_grad=True)], **kwargs).defaults
        super().__init__(params, defaults)  # calls add_param_group for each group

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)  # fills defaults, checks duplicates
        group = self.param_groups[-1]
        for p in sorted(group["params"], key=lambda p: -p.numel()):  # stable: same order on every rank
            r = min(range(self.world), key=lambda i: self.load[i])
            self.owner[p] = r
            self.load[r] += p.numel()
        mine = [p for p in group["params"] if self.owner[p] == self.rank]
        if not mine:
            return
        local = {**{k: v for k, v in group.items() if k != "params"}, "params": mine}
        if self.inner is None:
            self.inner = self.optimizer_cls([local], **self.kwargs)
        else:
            self.inner.add_param_group(local)
        self._inner_group[len(self.param_groups) - 1] = len(self.inner.param_groups) - 1

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.stage == 2:
            self._reduce_gradients()
        if self.inner is not None:
            for outer, inner in self._inner_group.items():
                for k, v in self.param_groups[outer].items():
                    if k != "params":
                        self.inner.param_groups[inner][k] = v
            self.inner.step()
        self._share_parameters()
        return loss

    def _per_owner(self):
        """(owner rank, its global rank, its parameters of one dtype), in the same order on every rank."""
        params = [p for g in self.param_groups for p in g["params"]]
        for r in range(self.world):
            by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
            for p in params:
                if self.owner[p] == r:
                    by_dtype.setdefault(p.dtype, []).append(p)
            src = dist.get_global_rank(self.group, r) if self.group is not None else r
            for ps in by_dtype.values():
                yield r, src, ps

    def _reduce_gradients(self) -> None:
        """ZeRO-2: each owner receives the mean of its parameters' grads (one reduce per owner and dtype);
        the other ranks drop theirs. A parameter without a local grad contributes zeros."""
        for r, dst, ps in self._per_owner():
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps])
            dist.reduce(flat, dst=dst, op=dist.ReduceOp.SUM, group=self.group)
            off = 0
            for p in ps:
                if r == self.rank and p.grad is not None:
                    p.grad.copy_(flat[off : off + p.numel()].view_as(p)).div_(self.world)
                elif r != self.rank:
                    p.grad = None  # freed: only the owner needs it
                off += p.numel()

    def _share_parameters(self) -> None:
        """Each owner broadcasts its updated parameters: one flat buffer per (owner, dtype)."""
        for r, src, ps in self._per_owner():
            flat = torch.cat([p.detach().reshape(-1) for p in ps])
            dist.broadcast(flat, src=src, group=self.group)
            if r != self.rank:
                off = 0
                for p in ps:
                    p.copy_(flat[off : off + p.numel()].view_as(p))
                    off += p.numel()

    def state_bytes(self) -> int:
        """Bytes of optimizer state tensors held by this rank."""
        if self.inner is None:
            return 0
        return sum(
            t.numel() * t.element_size() for s in self.inner.state.values() for t in s.values() if torch.is_tensor(t)
        )

    def _index(self) -> dict[torch.Tensor, int]:
        return {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}

    def state_dict(self) -> dict[str, Any]:
        """Collective: the full state in the unsharded optimizer's layout (the same dict on every rank)."""
        index = self._index()
        local = {index[p]: s for p, s in self.inner.state.items()} if self.inner is not None else {}
        shards: list[dict] = [None] * self.world
        dist.all_gather_object(shards, local, group=self.group)
        state = {i: s for shard in shards for i, s in shard.items()}
        groups, n = [], 0
        for g in self.param_groups:
            groups.append(
                {**{k: v for k, v in g.items() if k != "params"}, "params": list(range(n, n + len(g["params"])))}
            )
            n += len(g["params"])
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups, strict=True)
        ):
            raise ScratchLMError("optimizer state_dict does not match the parameter groups of this ShardedOptimizer")
        for saved, g in zip(groups, self.param_groups, strict=True):
            g.update({k: v for k, v in saved.items() if k != "params"})
        if self.inner is None:
            return
        index, inner_idx, inner_state = self._index(), 0, {}
        for outer, g in enumerate(self.param_groups):
            if outer not in self._inner_group:
                continue
            for p in g["params"]:
                if self.owner[p] == self.rank:
                    saved = state_dict["state"].get(index[p], state_dict["state"].get(str(index[p])))
                    if saved is not None:
                        inner_state[inner_idx] = saved
                    inner_idx += 1
        inner_groups = []
        for outer, inner in sorted(self._inner_group.items(), key=lambda kv: kv[1]):
            pg = self.inner.param_groups[inner]
            start = sum(len(x["params"]) for x in self.inner.param_groups[:inner])
            ids = list(range(start, start + len(pg["params"])))
            inner_groups.append({**{k: v for k, v in self.param_groups[outer].items() if k != "params"}, "params": ids})
        self.inner.load_state_dict({"state": inner_state, "param_groups": inner_groups})
