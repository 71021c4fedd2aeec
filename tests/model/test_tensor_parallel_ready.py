"""The model is ready for torch's tensor parallelism: `parallelize_module` with a colwise/rowwise plan on
the project's `Linear` (an nn.Linear subclass) runs on 2 gloo processes and gives the single-process logits.
(The full TP plan, with sequence parallel norms and loss parallel, is the parallelism issue's.)"""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

from scratchlm.model import ModelConfig, TransformerLM

CFG = dict(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, tie_embeddings=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = TransformerLM(ModelConfig(**CFG)).eval()
        mesh = init_device_mesh("cpu", (world,))
        for block in model.blocks.values():
            attn, mlp = block.mixer, block.mlp
            # each rank keeps H / world query heads and K / world kv heads: local head counts follow
            attn.n_heads //= world
            attn.kv_heads //= world
            plan = {"q_proj": ColwiseParallel(), "k_proj": ColwiseParallel(), "v_proj": ColwiseParallel()}
            parallelize_module(attn, mesh, plan | {"o_proj": RowwiseParallel()})
            parallelize_module(
                mlp, mesh, {"gate": ColwiseParallel(), "up": ColwiseParallel(), "down": RowwiseParallel()}
            )
        from torch.distributed.tensor import DTensor

        q = model.blocks["0"].mixer.q_proj.weight
        assert isinstance(q, DTensor) and q.to_local().shape == (CFG["d_model"] // world, CFG["d_model"])
        ids = torch.arange(24).reshape(2, 12) % 64
        with torch.no_grad():
            out[rank] = model(ids).clone()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multiprocess test is run on Linux")
def test_colwise_rowwise_plan_gives_single_process_logits():
    torch.manual_seed(0)
    ref = TransformerLM(ModelConfig(**CFG)).eval()
    ids = torch.arange(24).reshape(2, 12) % 64
    with torch.no_grad():
        want = ref(ids)
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        torch.testing.assert_close(out[rank], want, rtol=1e-5, atol=1e-5)
