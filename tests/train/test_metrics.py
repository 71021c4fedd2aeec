"""Run metrics: measuring the CPU's peak FLOP/s must not move the global RNG (it would change a run's dropout
masks depending on whether the measurement is cached in the process, and break bit-exact resume)."""

from __future__ import annotations

import torch

from scratchlm.train.metrics import measured_matmul_flops


def test_peak_measurement_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    assert measured_matmul_flops("cpu", n=32, trials=1, seconds=0.001) > 0
    assert torch.equal(torch.get_rng_state(), before)
