"""Ring attention (context parallel) on 2 and 4 gloo processes against full causal attention in one process."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.distributed.multiproc import run_ranks


def _full(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])


def _attn_worker(rank, world, q, k, v, dout, balanced):
    from scratchlm.distributed.ring_attention import ring_attention, shard_sequence, unshard_sequence

    ql, kl, vl = (shard_sequence(t, None, dim=2, balanced=balanced).requires_grad_() for t in (q, k, v))
    out = ring_attention(ql, kl, vl, None, balanced)
    out.backward(shard_sequence(dout, None, dim=2, balanced=balanced))
    return [unshard_sequence(t, None, dim=2, balanced=balanced) for t in (out.detach(), ql.grad, kl.grad, vl.grad)]


@pytest.mark.parametrize(
    "world,balanced,kv_heads",
    [
        pytest.param(2, False, 4, marks=pytest.mark.slow),
        pytest.param(2, True, 4, marks=pytest.mark.slow),
        pytest.param(2, True, 2, marks=pytest.mark.slow),
        (4, True, 1),
        pytest.param(4, False, 2, marks=pytest.mark.slow),
    ],
)
def test_ring_attention_matches_full(world, balanced, kv_heads):
    """Output and q/k/v grads equal SDPA's full causal attention (fp32, max abs error < 2e-5)."""
    g = torch.Generator().manual_seed(0)
    B, H, T, D = 2, 4, 16 * world, 8
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64).float()
    k, v = (torch.randn(B, kv_heads, T, D, generator=g) for _ in range(2))
    dout = torch.randn(B, H, T, D, generator=g)
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref = _full(qr, kr, vr)
    ref.backward(dout)
    results = run_ranks(_attn_worker, world, (q, k, v, dout, balanced))
    for got in results:  # every rank gathered the whole sequence
        for name, a, b in zip("o dq dk dv".split(), got, (ref.detach(), qr.grad, kr.grad, vr.grad), strict=True):
            err = (a - b).abs().max().item()
            assert err < 2e-5, f"{name}: max abs error {err:.2e}"


MODEL = dict(vocab_size=61, context_length=32, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2)


def _model():
    from scratchlm.config import from_dict
    from scratchlm.model import ModelConfig, TransformerLM

    torch.manual_seed(0)
    return TransformerLM(from_dict(ModelConfig, MODEL))


def _loss_and_grads(model, ids, targets, positions=None, n_total=None):
    logits = model(ids, positions=positions)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum") / n_total
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def _model_worker(rank, world, ids, targets):
    import torch.distributed as dist

    from scratchlm.distributed.ring_attention import apply_context_parallel, shard_sequence

    model = _model()
    apply_context_parallel(model, None)
    T = ids.shape[1]
    pos = shard_sequence(torch.arange(T)[None].expand_as(ids), None)  # global positions for RoPE
    loss, grads = _loss_and_grads(model, shard_sequence(ids, None), shard_sequence(targets, None), pos, ids.numel())
    dist.all_reduce(loss)  # each rank's loss is its tokens' share of the global mean
    for g in grads.values():
        dist.all_reduce(g)
    return loss, grads


def test_transformer_under_context_parallel_matches_one_process():
    """A TransformerLM (RoPE, GQA) forward + backward on 2 CP ranks: loss and every grad equal one process."""
    g = torch.Generator().manual_seed(1)
    ids, targets = torch.randint(0, 61, (2, 32), generator=g), torch.randint(0, 61, (2, 32), generator=g)
    ref_loss, ref_grads = _loss_and_grads(_model(), ids, targets, n_total=ids.numel())
    for loss, grads in run_ranks(_model_worker, 2, (ids, targets)):
        assert abs(loss.item() - ref_loss.item()) < 1e-5
        for n, ref in ref_grads.items():
            err = (grads[n] - ref).abs().max().item()
            assert err < 1e-5, f"{n}: max abs error {err:.2e}"
