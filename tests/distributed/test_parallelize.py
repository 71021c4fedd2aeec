"""parallelize(): activation checkpointing keeps losses and gradients (and saves fewer activations), compile
runs and matches eager, DDP goes outermost (no unused-parameter search: every parameter is used),
a layout that does not divide the model is refused. (DDP over 2 processes == 1 process: tests/train/test_loop.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.nn.parallel import DistributedDataParallel

from scratchlm.config import from_dict
from scratchlm.distributed.mesh import Mesh, ParallelDims
from scratchlm.distributed.parallelize import apply_activation_checkpointing, parallelize, unwrap_model
from scratchlm.errors import ScratchLMError
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.train.config import TrainConfig
from scratchlm.train.losses import LMLoss

MODEL = dict(vocab_size=61, context_length=16, d_model=16, n_layers=2, n_heads=2)
CPU = Mesh(torch.device("cpu"))


def model(**kw) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(from_dict(ModelConfig, {**MODEL, **kw}))


def cfg(**kw) -> TrainConfig:
    return from_dict(TrainConfig, {"model": MODEL, **kw})


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randint(0, MODEL["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(seed))
    return w[:, :-1], w[:, 1:]


def loss_and_grads(fwd: nn.Module, plain: nn.Module, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss (+ aux) and gradients by state_dict name (wrapper-free names), from RNG seed `seed` (dropout)."""
    x, y = batch()
    torch.manual_seed(seed)
    loss = LMLoss()(fwd(x), y)[0] + plain.aux_loss()
    loss.backward()
    grads = {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in plain.named_parameters()}
    return loss.detach(), grads


def saved_activations(m: nn.Module) -> int:
    """Tensors autograd keeps for the backward during one forward."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        m(batch()[0])
    return len(saved)


@pytest.mark.parametrize(
    "kw", [{"dropout_resid": 0.1}, {"moe": {"num_experts": 4, "top_k": 2}}], ids=["dropout", "moe"]
)
def test_activation_checkpointing_keeps_loss_and_gradients(kw):
    plain, wrapped = model(**kw), model(**kw)
    fwd = parallelize(wrapped, cfg(activation_checkpointing=True, model={**MODEL, **kw}), CPU)
    assert fwd is wrapped and all(isinstance(b, CheckpointWrapper) for b in wrapped.blocks.values())
    assert list(wrapped.state_dict()) == list(plain.state_dict())  # checkpoints are unchanged
    loss_a, grads_a = loss_and_grads(plain, plain)
    loss_b, grads_b = loss_and_grads(fwd, wrapped)
    assert torch.equal(loss_a, loss_b) and grads_a.keys() == grads_b.keys()
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, atol=0, rtol=0, msg=name)
    assert saved_activations(wrapped) < saved_activations(plain) / 2  # the blocks' activations are not kept


def test_selective_checkpointing_keeps_gradients_and_saves_between_none_and_full():
    plain, full, selective = model(), model(), model()
    parallelize(full, cfg(parallel={"activation_checkpointing": "full"}), CPU)
    parallelize(selective, cfg(activation_checkpointing=True, parallel={"activation_checkpointing": "selective"}), CPU)
    assert all(isinstance(b, CheckpointWrapper) for b in selective.blocks.values())
    loss_a, grads_a = loss_and_grads(plain, plain)
    loss_b, grads_b = loss_and_grads(selective, selective)
    assert torch.equal(loss_a, loss_b)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, atol=0, rtol=0, msg=name)
    # the backward recomputes no matmul under selective checkpointing (their outputs are kept), every block
    # matmul under full checkpointing; both recompute the cheap ops (here: the activation function)
    mm_plain, act_plain = backward_ops(plain)
    mm_full, act_full = backward_ops(full)
    mm_sel, act_sel = backward_ops(selective)
    assert mm_sel == mm_plain < mm_full and act_plain < act_sel == act_full


def backward_ops(m: nn.Module) -> tuple[int, int]:
    """(matmuls, activation-function calls) run by the backward of one step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        mm = act = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            Count.mm += name in ("mm", "addmm", "bmm")
            Count.act += name in ("silu", "gelu", "relu")
            return func(*args, **(kwargs or {}))

    loss = LMLoss()(m(batch()[0]), batch()[1])[0]
    with Count():
        loss.backward()
    return Count.mm, Count.act


def test_activation_checkpointing_wraps_a_module_list_too():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.GELU()) for _ in range(3))

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    torch.manual_seed(0)
    a = Stack()
    b = apply_activation_checkpointing(copy.deepcopy(a))
    assert all(isinstance(m, CheckpointWrapper) for m in b.blocks)
    x = torch.randn(2, 4)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=0, rtol=0)


def test_parallelize_with_compile_runs_and_matches_eager():
    plain, m = model(), model()
    # aot_eager: the same graph capture and autograd as inductor, compiled in seconds on a CPU (inductor: slow test)
    fwd = parallelize(m, cfg(compile=True, activation_checkpointing=True), CPU, compile_backend="aot_eager")
    assert fwd is not m and unwrap_model(fwd) is m
    loss_a, grads_a = loss_and_grads(plain, plain)
    loss_b, grads_b = loss_and_grads(fwd, m)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=1e-6)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert fwd(batch()[0], output="hidden").shape == (2, 8, MODEL["d_model"])


def test_layout_that_does_not_divide_the_model_is_refused():
    with pytest.raises(ScratchLMError, match="n_heads=2 is not divisible by tp=3"):
        parallelize(model(), cfg(), Mesh(torch.device("cpu"), ParallelDims(tp=3)))


def test_ddp_goes_last_without_unused_parameter_search():
    # A one-process group stands in for the launch; the mesh says dp = 2 so that parallelize wraps DDP.
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        mesh = Mesh(torch.device("cpu"), ParallelDims(dp_replicate=2))
        for kw in ({}, {"moe": {"num_experts": 4, "top_k": 2}}):
            m = model(**kw)
            fwd = parallelize(m, cfg(compile=True, model={**MODEL, **kw}), mesh, compile_backend="eager")
            assert isinstance(fwd, DistributedDataParallel) and hasattr(fwd.module, "_orig_mod")
            assert not fwd.find_unused_parameters and unwrap_model(fwd) is m
    finally:
        dist.destroy_process_group()
