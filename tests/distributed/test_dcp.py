"""Checkpoints of sharded runs change layout: a run trained under FSDP2 (dp_shard=2) is saved both ways,
(a) torch.distributed.checkpoint shards and (b) the gathered full state, then loaded under tensor parallel
(tp=2) by the same processes and by one process without a process group; the safetensors conversion holds
the trained weights. Model and optimizer states compare exactly (only copies move)."""

from __future__ import annotations

import sys

import pytest
import torch
from multiproc import run_ranks
from parity import config, train

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo multiprocess tests run on Linux")


def _build(parallel: dict, rank: int, world: int):
    from scratchlm.distributed.mesh import Mesh, ParallelDims
    from scratchlm.distributed.parallelize import parallelize
    from scratchlm.model import TransformerLM
    from scratchlm.train.optim import build_optimizer

    cfg = config(parallel)
    mesh = Mesh(torch.device("cpu"), ParallelDims.from_config(cfg.parallel, world), rank)
    torch.manual_seed(1)  # other initial weights than the saved ones: the load must replace them
    model = TransformerLM(cfg.model)
    fwd = parallelize(model, cfg, mesh)
    return cfg, mesh, model, fwd, build_optimizer(model, cfg.optim)


def _worker(rank: int, world: int, path: str) -> dict:
    from scratchlm.distributed.dcp import full_state, load_full_state, load_sharded, save_sharded

    cfg, mesh, model, fwd, _ = _build({"dp_shard": 2}, rank, world)
    torch.manual_seed(0)
    from parity import batches

    from scratchlm.train.losses import build_loss
    from scratchlm.train.optim import build_optimizer
    from scratchlm.train.step import train_step

    opt = build_optimizer(model, cfg.optim)
    for step, (x, y) in enumerate(batches()[:2]):
        rows = slice(mesh.dp_rank * 2, mesh.dp_rank * 2 + 2)
        train_step(fwd, [(x[rows], y[rows])], build_loss(cfg), opt, None, step=step, grad_clip=1.0)
    save_sharded(path, model, opt)
    saved = full_state(model, opt, rank0_only=False)
    out = {"model": saved[0], "optim": saved[1]}
    # into tensor parallel: from the DCP shards, and from the gathered full state
    for how in ("dcp", "full"):
        _, _, tp_model, _, tp_opt = _build({"tp": 2, "dp_replicate": 1}, rank, world)
        if how == "dcp":
            load_sharded(path, tp_model, tp_opt)
        else:
            load_full_state(tp_model, tp_opt, *saved)
        out[how] = dict(zip(("model", "optim"), full_state(tp_model, tp_opt, rank0_only=False)))
    return out


def _assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=where)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_fsdp_checkpoint_loads_under_tp_and_in_one_process(tmp_path):
    from safetensors.torch import load_file

    from scratchlm.distributed.dcp import load_full_state, load_sharded, sharded_to_safetensors
    from scratchlm.model import TransformerLM
    from scratchlm.train.optim import build_optimizer

    path = tmp_path / "dcp"
    results = run_ranks(_worker, 2, (str(path),))
    saved = results[0]
    _assert_same(saved, results[1])  # the gathered state is the same on every rank
    assert saved["optim"]["state"] and all(int(s["step"]) == 2 for s in saved["optim"]["state"].values())
    for how in ("dcp", "full"):
        _assert_same(saved["model"], saved[how]["model"], f"tp<-{how}")
        _assert_same(saved["optim"], saved[how]["optim"], f"tp<-{how}")
    # one process, no process group: DCP shards and the full state
    for how in ("dcp", "full"):
        cfg = config()
        torch.manual_seed(1)
        model = TransformerLM(cfg.model)
        opt = build_optimizer(model, cfg.optim)
        if how == "dcp":
            load_sharded(path, model, opt)
        else:
            load_full_state(model, opt, saved["model"], saved["optim"])
        _assert_same(saved["model"], dict(model.state_dict()), f"1<-{how}")
        _assert_same(saved["optim"]["state"], opt.state_dict()["state"], f"1<-{how}.optim")
    weights = load_file(sharded_to_safetensors(path, tmp_path / "model.safetensors"))
    for k, v in weights.items():
        torch.testing.assert_close(v, saved["model"][k], rtol=0, atol=0)
    assert set(weights) == set(saved["model"]) - {"head.weight"}  # tied: stored once
    _ = train
