"""train_step: accumulation invariance (2 x 1 rows == 1 x 2 rows), the loss callable and its `needs`,
the gradient hook, and a non-finite loss making no update."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.train.config import OptimConfig, ScheduleConfig
from scratchlm.train.losses import FusedLMLoss, LMLoss
from scratchlm.train.optim import build_optimizer
from scratchlm.train.schedules import Schedule
from scratchlm.train.step import train_step

CFG = dict(vocab_size=61, context_length=16, d_model=16, n_layers=2, n_heads=2)


def setup(seed: int = 0, **model):
    torch.manual_seed(seed)
    m = TransformerLM(ModelConfig(**{**CFG, **model}))
    opt = build_optimizer(m, OptimConfig(lr=1e-2))
    return m, opt, Schedule(opt, ScheduleConfig(warmup_steps=2), total_steps=10)


def rows(n: int = 2, T: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, CFG["vocab_size"], (n, T + 1), generator=g)
    return w[:, :-1], w[:, 1:]  # (n, T) each


def params(m) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


@pytest.mark.parametrize("loss_fn", [LMLoss(), LMLoss(z_loss_coef=1e-2), FusedLMLoss()], ids=["lm", "z", "fused"])
def test_two_micro_batches_of_one_row_equal_one_of_two(loss_fn):
    x, y = rows()
    a, opt_a, sched_a = setup()
    b, opt_b, sched_b = setup()
    ra = train_step(a, [(x, y)], loss_fn, opt_a, sched_a, step=1, grad_clip=1.0)
    rb = train_step(b, [(x[:1], y[:1]), (x[1:], y[1:])], loss_fn, opt_b, sched_b, step=1, grad_clip=1.0)
    assert ra.loss == pytest.approx(rb.loss, rel=1e-6) and ra.lr == rb.lr == opt_a.param_groups[0]["lr"]
    assert ra.grad_norm == pytest.approx(rb.grad_norm, rel=1e-5)
    assert set(ra.parts) == ({"ce", "z_loss"} if getattr(loss_fn, "z_loss_coef", 0) else {"ce"})
    for p, q in zip(params(a), params(b)):
        torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4)  # Adam magnifies rounding where grad ~ 0
    assert any(not torch.equal(p, q) for p, q in zip(params(a), params(setup()[0])))  # the step did move them
    assert all(p.grad is None for p in a.parameters())  # zeroed for the next step


def test_the_loss_gets_the_output_it_needs_and_the_plain_model():
    m, opt, sched = setup(tie_embeddings=False)
    x, y = rows()
    seen = []

    class Probe:
        needs = "hidden"

        def __call__(self, out, targets, model):
            seen.append((tuple(out.shape), model))
            return (model.head(out).float() ** 2).mean(), {"sq": out.detach().mean()}

    class Wrapper(torch.nn.Module):  # as torch.compile's: the model under `_orig_mod`
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

        def forward(self, *args, **kwargs):
            return self._orig_mod(*args, **kwargs)

    train_step(Wrapper(m), [(x, y)], Probe(), opt, sched, step=0)
    assert seen == [((2, 8, CFG["d_model"]), m)]  # (B, T, D) hidden states; the model under the wrapper


def test_fused_and_plain_losses_give_the_same_step():
    x, y = rows()
    a, opt_a, sched_a = setup(tie_embeddings=False)
    b, opt_b, sched_b = setup(tie_embeddings=False)
    ra = train_step(a, [(x, y)], LMLoss(), opt_a, sched_a, step=3)
    rb = train_step(b, [(x, y)], FusedLMLoss(), opt_b, sched_b, step=3)
    assert ra.loss == pytest.approx(rb.loss, rel=1e-6)
    for p, q in zip(params(a), params(b)):
        torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4)  # Adam magnifies rounding where grad ~ 0


def test_grad_hook_sees_micro_batch_and_step_gradients():
    m, opt, sched = setup()
    x, y = rows(4)
    calls = []

    def hook(micro, factor):
        g = torch.cat([p.grad.flatten() * factor for p in m.parameters() if p.grad is not None])
        calls.append((micro, g.clone()))

    train_step(m, [(x[:2], y[:2]), (x[2:], y[2:])], LMLoss(), opt, sched, step=1, grad_hook=hook)
    assert [c[0] for c in calls] == [0, None]

    def grad_of(xs, ys):  # the mean-loss gradient at the starting parameters
        ref, _, _ = setup()
        (LMLoss()(ref(xs), ys)[0] + ref.aux_loss()).backward()
        return torch.cat([p.grad.flatten() for p in ref.parameters() if p.grad is not None])

    torch.testing.assert_close(calls[0][1], grad_of(x[:2], y[:2]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(calls[1][1], (grad_of(x[:2], y[:2]) + grad_of(x[2:], y[2:])) / 2, atol=1e-6, rtol=1e-5)


def test_non_finite_loss_makes_no_update():
    m, opt, sched = setup()
    before = params(m)
    x, y = rows()

    def nan_loss(out, targets, model):
        return out.float().mean() * math.nan, {}

    nan_loss.needs = "logits"
    result = train_step(m, [(x, y)], nan_loss, opt, sched, step=0)
    assert not result.finite and result.grad_norm is None
    assert all(torch.equal(p, q) for p, q in zip(before, params(m)))
    assert all(p.grad is None for p in m.parameters())
