"""Gradient noise scale: the two-batch estimator recovers tr(Sigma) / |G|^2, and the loop logs it."""

from __future__ import annotations

import json

import pytest
import torch
from test_loop import cfg_for

from scratchlm.train.loop import train
from scratchlm.train.noise_scale import NoiseScale, grad_sq_norm


def test_estimator_recovers_the_noise_scale_of_a_known_gradient_distribution():
    gen = torch.Generator().manual_seed(0)
    dim = 64
    true_g = torch.randn(dim, generator=gen, dtype=torch.float64) * 0.1  # |G|^2 ~ 0.64
    sigma = torch.rand(dim, generator=gen, dtype=torch.float64) * 0.5  # per-example std per coordinate
    expected = float((sigma**2).sum() / (true_g**2).sum())
    b_small, b_big = 8, 32
    est = NoiseScale(b_small, b_big, ema=0.999)
    for _ in range(4000):
        per_example = true_g + sigma * torch.randn(b_big, dim, generator=gen, dtype=torch.float64)
        small = per_example[:b_small].mean(0)  # the small batch is part of the big one, as in the loop
        big = per_example.mean(0)
        out = est.update(float(small @ small), float(big @ big))
    assert out["gns"] == pytest.approx(expected, rel=0.1)
    assert out["gns_g2"] == pytest.approx(float(true_g @ true_g), rel=0.1)


def test_estimator_state_roundtrip_and_bad_sizes():
    a = NoiseScale(4, 16)
    a.update(2.0, 1.0)
    b = NoiseScale(4, 16)
    b.load_state_dict(a.state_dict())
    assert b.update(3.0, 1.5) == a.update(3.0, 1.5)
    with pytest.raises(ValueError, match="b_small < b_big"):
        NoiseScale(16, 16)


def test_grad_sq_norm_sums_every_gradient():
    w = torch.nn.Parameter(torch.zeros(3))
    v = torch.nn.Parameter(torch.zeros(2, 2))
    u = torch.nn.Parameter(torch.zeros(1))  # no gradient: skipped
    w.grad, v.grad = torch.tensor([1.0, 2.0, 2.0]), torch.full((2, 2), 0.5)
    assert grad_sq_norm([w, v, u]) == pytest.approx(9.0 + 1.0)


def test_loop_logs_the_noise_scale_with_accumulation_only(tiny_data, tmp_path):
    train(cfg_for(tiny_data, tmp_path, "acc", steps=12, log_every=4, eval_every=0, grad_accum=2), progress=False)
    train(cfg_for(tiny_data, tmp_path, "plain", steps=4, log_every=4, eval_every=0), progress=False)

    def train_records(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["kind"] == "train"]

    acc = train_records("acc")
    assert all("gns" in r and r["gns_trace"] == r["gns_trace"] for r in acc)  # logged, not NaN
    assert all("gns" not in r for r in train_records("plain"))
