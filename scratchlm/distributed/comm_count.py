"""Count the bytes each process sends through torch.distributed collectives, per op, for a stretch of code.

    from scratchlm.distributed.comm_count import count_comm
    with count_comm() as c:                  # wraps dist.all_reduce, broadcast, all_gather, ... while inside
        loss.backward(); dp.finish_gradient_synchronization(); opt.step()
    c.calls["all_reduce"], c.payload["all_reduce"], c.bus["all_reduce"]   # counts and bytes, per op
    c.total_payload, c.total_bus, c.table()

    torchrun --nproc_per_node 2 my_script.py  # counts are per process (each rank has its own counter)

`payload` is the logical size of the collective (nccl-tests' "size"): the reduced tensor for all_reduce,
the gathered output for all_gather, the scattered input for reduce_scatter, the tensor for broadcast and
send/recv. `bus` is what one rank moves over its links under the ring algorithms, so it can be set
against textbook formulas: all_reduce 2 (N - 1) / N x payload (a reduce-scatter then an all-gather),
all_gather and reduce_scatter (N - 1) / N x payload, broadcast, send and recv 1 x payload (a pipelined
chain), all_to_all (N - 1) / N x payload. A collective called from inside another counted one (a
deprecated name forwarding to its new one) is counted once, under the name the caller used.

Only calls made through the `torch.distributed` module attributes are seen (`dist.all_reduce(...)` in the
project's own DDP / ZeRO, ring attention, pipeline). torch DDP's C++ reducer, FSDP2 and DTensor issue
their collectives below Python (c10d / functional collectives) and are not counted here.
"""

from __future__ import annotations

import inspect
import threading
from collections import Counter
from contextlib import contextmanager

import torch
import torch.distributed as dist

# op -> (argument holding the tensor whose size is the payload, ring factor as a function of N)
_OPS: dict[str, tuple[str, object]] = {
    "all_reduce": ("tensor", lambda n: 2 * (n - 1) / n),
    "broadcast": ("tensor", lambda n: 1.0),
    "reduce": ("tensor", lambda n: 1.0),
    "all_gather": ("tensor_list", lambda n: (n - 1) / n),
    "all_gather_into_tensor": ("output_tensor", lambda n: (n - 1) / n),
    "all_gather_single": ("output_tensor", lambda n: (n - 1) / n),
    "reduce_scatter": ("input_list", lambda n: (n - 1) / n),
    "reduce_scatter_tensor": ("input", lambda n: (n - 1) / n),
    "reduce_scatter_single": ("input", lambda n: (n - 1) / n),
    "all_to_all_single": ("input", lambda n: (n - 1) / n),
    "all_to_all": ("input_tensor_list", lambda n: (n - 1) / n),
    "send": ("tensor", lambda n: 1.0),
    "recv": ("tensor", lambda n: 1.0),
    "isend": ("tensor", lambda n: 1.0),
    "irecv": ("tensor", lambda n: 1.0),
    "batch_isend_irecv": ("p2p_op_list", lambda n: 1.0),  # sends and receives of the batch, summed
}
_depth = threading.local()  # a deprecated op that forwards to its new name is counted once


def _nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, dist.P2POp):
        return _nbytes(x.tensor)
    return sum(_nbytes(t) for t in x)  # a list of tensors


class CommCounter:
    """Calls, payload bytes and ring bus bytes per op name (for this process)."""

    def __init__(self):
        self.calls: Counter[str] = Counter()
        self.payload: Counter[str] = Counter()
        self.bus: Counter[str] = Counter()

    def record(self, op: str, nbytes: int, world: int) -> None:
        self.calls[op] += 1
        self.payload[op] += nbytes
        self.bus[op] += nbytes * _OPS[op][1](world)

    def reset(self) -> None:
        self.calls.clear()
        self.payload.clear()
        self.bus.clear()

    @property
    def total_payload(self) -> int:
        return sum(self.payload.values())

    @property
    def total_bus(self) -> float:
        return sum(self.bus.values())

    def table(self) -> str:
        rows = [f"{'op':<24}{'calls':>8}{'payload MB':>14}{'ring bus MB':>14}"]
        for op in sorted(self.calls):
            rows.append(f"{op:<24}{self.calls[op]:>8}{self.payload[op] / 1e6:>14.3f}{self.bus[op] / 1e6:>14.3f}")
        return "\n".join(rows)


def _wrap(op: str, fn, counter: CommCounter):
    arg = _OPS[op][0]
    sig = inspect.signature(fn)

    def counted(*args, **kwargs):
        depth = getattr(_depth, "n", 0)
        if depth == 0:
            bound = sig.bind_partial(*args, **kwargs)
            group = bound.arguments.get("group")
            counter.record(op, _nbytes(bound.arguments[arg]), dist.get_world_size(group))
        _depth.n = depth + 1
        try:
            return fn(*args, **kwargs)
        finally:
            _depth.n = depth

    return counted


@contextmanager
def count_comm(counter: CommCounter | None = None):
    """Inside, the torch.distributed collectives record into `counter` (a new one if None), which is yielded."""
    counter = counter if counter is not None else CommCounter()
    saved = {op: getattr(dist, op) for op in _OPS if hasattr(dist, op)}
    try:
        for op, fn in saved.items():
            setattr(dist, op, _wrap(op, fn, counter))
        yield counter
    finally:
        for op, fn in saved.items():
            setattr(dist, op, fn)
