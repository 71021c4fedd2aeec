"""Pipeline parallel (torch's GPipe and 1F1B schedules) on 2 gloo processes against one process."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.multiproc import run_ranks

MODEL = dict(vocab_size=61, context_length=16, d_model=16, n_layers=2, n_heads=2, tie_embeddings=False)
STEPS, LR = 3, 1e-2


def _model():
    from scratchlm.config import from_dict
    from scratchlm.model import ModelConfig, TransformerLM

    torch.manual_seed(0)
    return TransformerLM(from_dict(ModelConfig, MODEL))


def _pp_worker(rank, world, ids, targets, kind, m):
    from scratchlm.distributed.pipeline import build_schedule, pipeline_stage_module

    stage = pipeline_stage_module(_model(), rank, world)
    sched = build_schedule(stage, rank, world, m, kind)
    opt = torch.optim.AdamW(stage.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        if rank == 0:
            sched.step(ids)
        else:
            out = []
            sched.step(target=targets, losses=out)
            losses.append(torch.stack(out).mean())
        opt.step()
    return {"losses": losses, "params": {n: p.detach() for n, p in stage.named_parameters()}}


@pytest.mark.parametrize("kind", [pytest.param("gpipe", marks=pytest.mark.slow), "1f1b"])
def test_pipeline_matches_one_process(kind):
    """Losses and parameters after 3 AdamW steps on the same global batch (4 micro-batches) equal one process."""
    from scratchlm.distributed.pipeline import lm_loss

    g = torch.Generator().manual_seed(1)
    ids, targets = torch.randint(0, 61, (8, 16), generator=g), torch.randint(0, 61, (8, 16), generator=g)
    ref = _model()
    opt = torch.optim.AdamW(ref.parameters(), lr=LR)
    ref_losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = lm_loss(ref(ids), targets)
        loss.backward()
        opt.step()
        ref_losses.append(loss.detach())
    r0, r1 = run_ranks(_pp_worker, 2, (ids, targets, kind, 4))
    for a, b in zip(r1["losses"], ref_losses, strict=True):
        assert abs(a.item() - b.item()) < 1e-5
    ref_params = dict(ref.named_parameters())
    got = {**r0["params"], **r1["params"]}
    assert set(got) == set(ref_params)
    for n, p in got.items():
        err = (p - ref_params[n].detach()).abs().max().item()
        assert err < 1e-5, f"{n}: max abs error {err:.2e}"
