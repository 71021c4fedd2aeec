"""Expert parallelism on 2 gloo processes (each rank half the batch, half the experts, tokens exchanged by
all-to-all) trains like 1 process on the whole batch: losses and every parameter after 3 AdamW steps."""

from __future__ import annotations

import sys

import pytest
import torch
from multiproc import run_ranks

from scratchlm.config import from_dict
from scratchlm.errors import ScratchLMError
from scratchlm.model import TransformerLM
from scratchlm.model.config import ModelConfig

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo multiprocess tests run on Linux")

MODEL = dict(
    vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp="swiglu", d_ff=48,
    moe={"num_experts": 4, "top_k": 2, "aux_loss_coef": 0.0, "z_loss_coef": 0.001},
)  # fmt: skip
STEPS, BATCH = 3, 4


def _model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(from_dict(ModelConfig, MODEL))


def _batches():
    g = torch.Generator().manual_seed(1)
    w = [torch.randint(0, MODEL["vocab_size"], (BATCH, 17), generator=g) for _ in range(STEPS)]
    return [(x[:, :-1], x[:, 1:]) for x in w]


def _train(model, rows: slice, sync=None) -> list[float]:
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for x, y in _batches():
        logits = model(x[rows])
        loss = F.cross_entropy(logits.flatten(0, 1), y[rows].flatten()) + model.aux_loss()
        loss.backward()
        if sync is not None:
            loss = sync(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def _worker(rank: int, world: int) -> dict:
    import torch.distributed as dist

    from scratchlm.distributed.expert_parallel import apply_expert_parallel, sync_expert_parallel_grads

    model = apply_expert_parallel(_model())

    def sync(loss):
        sync_expert_parallel_grads(model)
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        return loss / world

    per = BATCH // world
    losses = _train(model, slice(rank * per, (rank + 1) * per), sync)
    return {"losses": losses, "params": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def test_expert_parallel_two_processes_match_one():
    ref_model = _model()
    ref_losses = _train(ref_model, slice(None))
    ref = ref_model.state_dict()
    results = run_ranks(_worker, 2)
    for rank, r in enumerate(results):
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
        for k, v in r["params"].items():
            if ".experts.local." in k:  # this rank's half of the experts
                name = k.replace(".experts.local.", ".experts.")
                want = ref[name][rank * 2 : (rank + 1) * 2]
            else:
                want = ref[k]
            torch.testing.assert_close(v, want, rtol=1e-4, atol=1e-5, msg=k)
    key = "blocks.0.ffn.f.experts.w_up"
    assert not torch.equal(
        ref[key], _model().state_dict()[key]
    )  # the experts trained (the test compares moved weights)


def _bad_worker(rank: int, world: int) -> str:
    from scratchlm.distributed.expert_parallel import apply_expert_parallel

    msgs = []
    for moe in ({"num_experts": 3, "top_k": 1}, {"num_experts": 4, "capacity_factor": 1.0}, {"num_experts": 0}):
        torch.manual_seed(0)
        model = TransformerLM(from_dict(ModelConfig, {**MODEL, "moe": moe}))
        try:
            apply_expert_parallel(model)
        except ScratchLMError as e:
            msgs.append(str(e))
    return "\n".join(msgs)


def test_expert_parallel_refuses_what_it_cannot_split():
    msgs = run_ranks(_bad_worker, 2)[0].splitlines()
    assert msgs == [
        "expert parallel: 3 experts do not split over 2 ranks",
        "expert parallel runs dropless routing (moe.capacity_factor = 0)",
        "expert parallel: the model has no MoE layers (model.moe.num_experts = 0)",
    ]
