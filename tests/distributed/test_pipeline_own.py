"""The project's own GPipe / 1F1B schedule (pipeline_own) on 2 and 4 gloo processes: loss and every gradient
equal one process on the whole batch and torch's Schedule1F1B; 1F1B keeps min(m, p - stage) activations."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.multiproc import run_ranks

MODEL = dict(vocab_size=61, context_length=16, d_model=16, n_layers=4, n_heads=2, tie_embeddings=False)
BATCH, SEQ, TOL = 8, 16, 1e-5
RUNS = [("own", "gpipe", 4), ("own", "1f1b", 4), ("own", "1f1b", 2), ("own", "1f1b", 1), ("torch", "1f1b", 4)]


def _model():
    from scratchlm.config import from_dict
    from scratchlm.model import ModelConfig, TransformerLM

    torch.manual_seed(0)
    return TransformerLM(from_dict(ModelConfig, MODEL))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 61, (BATCH, SEQ), generator=g), torch.randint(0, 61, (BATCH, SEQ), generator=g)


def _worker(rank, world):
    from scratchlm.distributed.pipeline import build_schedule, pipeline_stage_module
    from scratchlm.distributed.pipeline_own import OwnPipeline

    ids, targets = _batch()
    first, last = rank == 0, rank == world - 1
    out = {}
    for impl, kind, m in RUNS:
        stage = pipeline_stage_module(_model(), rank, world)
        peak, loss = None, None
        if impl == "own":
            pipe = OwnPipeline(stage, rank, world, m, kind, batch_size=BATCH, seq_len=SEQ)
            loss = pipe.step(ids if first else None, targets if last else None)
            peak = pipe.peak_in_flight
        else:
            sched, losses = build_schedule(stage, rank, world, m, kind), []
            sched.step(*([ids] if first else []), **(dict(target=targets, losses=losses) if last else {}))
            loss = torch.stack(losses).mean() if last else None
        grads = {n: p.grad.clone() for n, p in stage.named_parameters()}
        out[f"{impl}-{kind}-{m}"] = {"loss": loss, "grads": grads, "peak": peak}
    return out


def _reference():
    from scratchlm.distributed.pipeline import lm_loss

    ids, targets = _batch()
    model = _model()
    loss = lm_loss(model(ids), targets)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.fixture(scope="module", params=[2, pytest.param(4, marks=pytest.mark.slow)])
def runs(request):
    """world, and per run name: every rank's result (all runs of a world size share one spawn)."""
    world = request.param
    ranks = run_ranks(_worker, world)
    return world, {name: [r[name] for r in ranks] for name in ranks[0]}


def _merged_grads(per_rank):
    grads = {}
    for r in per_rank:
        assert not set(grads) & set(r["grads"]), "a parameter on two stages"
        grads.update(r["grads"])
    return grads


def test_loss_and_grads_equal_one_process(runs):
    world, results = runs
    ref_loss, ref_grads = _reference()
    for name, per_rank in results.items():
        assert all(r["loss"] is None for r in per_rank[:-1])
        assert abs(per_rank[-1]["loss"].item() - ref_loss.item()) < TOL, name
        grads = _merged_grads(per_rank)
        assert set(grads) == set(ref_grads), name
        for n, g in grads.items():
            err = (g - ref_grads[n]).abs().max().item()
            assert err < TOL, f"{name} p={world} {n}: max abs error {err:.2e}"


def test_own_equals_torch_schedule(runs):
    _, results = runs
    theirs = _merged_grads(results["torch-1f1b-4"])
    for name in ("own-1f1b-4", "own-gpipe-4"):
        assert abs(results[name][-1]["loss"].item() - results["torch-1f1b-4"][-1]["loss"].item()) < TOL
        for n, g in _merged_grads(results[name]).items():
            assert (g - theirs[n]).abs().max().item() < TOL, f"{name} {n}"


def test_peak_in_flight(runs):
    """1F1B: stage s holds min(m, p - s) activations at most; GPipe all m."""
    world, results = runs
    for name, per_rank in results.items():
        impl, kind, m = name.split("-")
        if impl == "own":
            want = [int(m) if kind == "gpipe" else min(int(m), world - s) for s in range(world)]
            assert [r["peak"] for r in per_rank] == want, name


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 8])
def test_schedule_actions_and_bubble(p, m):
    """Every micro-batch forward then backward once per stage; stored activations and idle ticks as in theory."""
    from scratchlm.distributed.pipeline_own import schedule_actions, timeline

    for kind in ("gpipe", "1f1b"):
        for s in range(p):
            acts = schedule_actions(kind, s, p, m)
            assert sorted(acts) == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
            assert [i for op, i in acts if op == "F"] == list(range(m)) == [i for op, i in acts if op == "B"]
            live, peak = 0, 0
            for op, _ in acts:
                live += 1 if op == "F" else -1
                peak = max(peak, live)
            assert peak == (m if kind == "gpipe" else min(m, p - s))
        rows = timeline(kind, p, m).splitlines()
        assert len(rows) == p
        ticks = len(rows[0].split()) - 1
        assert ticks == 2 * (m + p - 1)  # idle fraction (p - 1) / (m + p - 1) with unit-cost F and B
        assert all(r.split()[1:].count("..") == 2 * (p - 1) for r in rows)


def test_one_stage_equals_one_process():
    """p = 1 needs no process group: micro-batch accumulation alone equals the whole batch."""
    from scratchlm.distributed.pipeline import pipeline_stage_module
    from scratchlm.distributed.pipeline_own import OwnPipeline

    ids, targets = _batch()
    ref_loss, ref_grads = _reference()
    stage = pipeline_stage_module(_model(), 0, 1)
    pipe = OwnPipeline(stage, 0, 1, 4, "1f1b", batch_size=BATCH, seq_len=SEQ)
    assert abs(pipe.step(ids, targets).item() - ref_loss.item()) < TOL
    assert pipe.peak_in_flight == 1
    for n, p in stage.named_parameters():
        assert (p.grad - ref_grads[n]).abs().max().item() < TOL, n


def test_bad_config_errors():
    from scratchlm.distributed.pipeline import pipeline_stage_module
    from scratchlm.distributed.pipeline_own import OwnPipeline
    from scratchlm.errors import ScratchLMError

    stage = pipeline_stage_module(_model(), 0, 1)
    kw = dict(batch_size=BATCH, seq_len=SEQ)
    with pytest.raises(ScratchLMError, match="n_microbatches must be >= 1, got 0"):
        OwnPipeline(stage, 0, 1, 0, "1f1b", **kw)
    with pytest.raises(ScratchLMError, match="unknown schedule 'zb'"):
        OwnPipeline(stage, 0, 1, 2, "zb", **kw)
    with pytest.raises(ScratchLMError, match="4 layers do not split into 3"):
        pipeline_stage_module(_model(), 0, 3)
    with pytest.raises(ScratchLMError, match="8 rows does not split into 3"):
        OwnPipeline(stage, 0, 1, 3, "gpipe", **kw)
    with pytest.raises(ScratchLMError, match="stage 2 outside 0..1"):
        OwnPipeline(stage, 2, 2, 2, "gpipe", **kw)
    with pytest.raises(ScratchLMError, match="process group of 2 ranks"):
        OwnPipeline(pipeline_stage_module(_model(), 0, 2), 0, 2, 2, "gpipe", **kw)
    pipe = OwnPipeline(stage, 0, 1, 2, "gpipe", **kw)
    ids, targets = _batch()
    with pytest.raises(ScratchLMError, match=r"needs ids of shape \(8, 16\), got None"):
        pipe.step(None, targets)
    with pytest.raises(ScratchLMError, match=r"needs targets of shape \(8, 16\), got \(8, 15\)"):
        pipe.step(ids, targets[:, :-1])
