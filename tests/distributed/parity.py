"""Training parity: a few AdamW steps (clipping on) of a small GQA SwiGLU model on one global batch, in one
process and under a parallel layout; losses and final parameters are compared by the tests."""

from __future__ import annotations

import torch

from scratchlm.config import from_dict
from scratchlm.model import TransformerLM
from scratchlm.train.config import TrainConfig

MODEL = dict(
    vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp="swiglu", d_ff=64,
    tie_embeddings=True,
)  # fmt: skip
STEPS, BATCH = 3, 4  # optimizer steps; global batch rows
TOL = dict(rtol=1e-4, atol=1e-5)  # fp32: only the order of the sums differs (sharded matmuls, reductions)


def config(parallel: dict | None = None, **kw) -> TrainConfig:
    model = {**MODEL, **kw.pop("model", {})}
    return from_dict(TrainConfig, {"model": model, "parallel": parallel or {}, "device": "cpu", **kw})


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    w = [torch.randint(0, MODEL["vocab_size"], (BATCH, 17), generator=g) for _ in range(STEPS)]
    return [(x[:, :-1], x[:, 1:]) for x in w]


def train(fwd, plain, cfg: TrainConfig, rows: slice = slice(None)) -> list[float]:
    """STEPS optimizer steps on `rows` of each global batch; the losses (averaged over processes by train_step)."""
    from scratchlm.train.losses import build_loss
    from scratchlm.train.optim import build_optimizer
    from scratchlm.train.step import train_step

    opt = build_optimizer(plain, cfg.optim)
    loss_fn = build_loss(cfg)
    losses = []
    for step, (x, y) in enumerate(batches()):
        r = train_step(fwd, [(x[rows], y[rows])], loss_fn, opt, None, step=step, grad_clip=cfg.optim.grad_clip)
        losses.append(r.loss)
    return losses


def reference(**kw) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Single process, whole batch."""
    cfg = config(**kw)
    torch.manual_seed(0)
    model = TransformerLM(cfg.model)
    losses = train(model, model, cfg)
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def parallel_worker(rank: int, world: int, parallel: dict, kw: dict) -> dict:
    """One rank: the same model (same seed), parallelized, trained on this rank's rows; full state gathered."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from scratchlm.distributed.mesh import Mesh, ParallelDims
    from scratchlm.distributed.parallelize import parallelize

    cfg = config(parallel, **kw)
    dims = ParallelDims.from_config(cfg.parallel, world)
    mesh = Mesh(torch.device("cpu"), dims, rank)
    torch.manual_seed(0)
    model = TransformerLM(cfg.model)
    fwd = parallelize(model, cfg, mesh, compile_backend="aot_eager")
    per = BATCH // dims.dp
    losses = train(fwd, model, cfg, slice(mesh.dp_rank * per, (mesh.dp_rank + 1) * per))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    out = {"losses": losses, "params": {k: v.detach().clone() for k, v in full.items()}, "dims": dims.enabled}
    if dims.enabled == {"tp": dims.tp}:  # tensor parallel alone: the communication of one step, counted
        out["comm"] = comm_volume(fwd, batches()[0][0])
    return out


def assert_parity(results: list[dict], ref: tuple[list[float], dict[str, torch.Tensor]]) -> None:
    ref_losses, ref_params = ref
    for r in results:
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(ref_losses), **TOL)
        assert r["params"].keys() == ref_params.keys()
        for k, v in ref_params.items():
            torch.testing.assert_close(r["params"][k], v, **TOL, msg=k)
        assert any(not torch.equal(ref_params[k], p0) for k, p0 in _initial().items())  # training moved them


def _initial() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return TransformerLM(config().model).state_dict()


def comm_volume(model, x) -> dict[str, dict[str, int]]:
    """Elements moved by the collectives of one forward and one backward of `model` on `x`, per pass and kind:
    all_reduce and reduce_scatter count their (full) input, all_gather its (full) output: the B*T*D-sized
    tensors of the textbook formulas."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.elems: dict[str, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.__name__.split(".")[0]
            kind = {"all_reduce": "all_reduce", "all_gather_into_tensor": "all_gather"}.get(name)
            kind = kind or ("reduce_scatter" if name == "reduce_scatter_tensor" else None)
            if kind:
                self.elems[kind] = self.elems.get(kind, 0) + (out if kind == "all_gather" else args[0]).numel()
            return out

    fwd, bwd = Count(), Count()
    with fwd:
        loss = model(x).logsumexp(-1).mean()
    with bwd:
        loss.backward()
    model.zero_grad(set_to_none=True)
    return {"forward": fwd.elems, "backward": bwd.elems}
