"""Depth/width rule, nearest preset, predictions for a budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
from synth import isoflop_runs

from scratchlm.model.accounting import count_params, flops_per_token
from scratchlm.model.config import ModelConfig
from scratchlm.scaling.fit import FitResult
from scratchlm.scaling.laws import Law, LawSamples
from scratchlm.scaling.predict import predict
from scratchlm.scaling.shapes import (
    ShapeRule,
    head_dim_for,
    nearest_preset,
    params_of,
    rule_shape,
    shape_config,
    train_flops_per_token,
    widths,
)


def test_head_dim_rule():
    assert [head_dim_for(d) for d in (16, 64, 96, 144, 192, 256, 768, 1344)] == [4, 16, 16, 16, 32, 64, 64, 64]
    for d in widths(2048):
        hd = head_dim_for(d)
        assert d % hd == 0 and hd % 2 == 0 and d // hd >= 4


def test_extrapolated_counts_equal_the_model_builds():
    cfg = shape_config(ModelConfig(vocab_size=1000, context_length=128), 320, ShapeRule())
    assert cfg.n_layers == 10 and cfg.n_heads == 5
    assert params_of(cfg) == count_params(cfg)
    assert train_flops_per_token(cfg, 128) == flops_per_token(cfg, 128)["train"]


@pytest.mark.parametrize("target", [3e5, 2e6, 3e7, 4e8])
def test_rule_shape_is_the_closest_on_the_grid(target):
    base = ModelConfig(vocab_size=4096, context_length=256)
    rule = ShapeRule(aspect_ratio=32)
    cfg = rule_shape(target, base, rule)
    assert cfg.n_layers == max(1, round(cfg.d_model / 32)) and cfg.d_model % cfg.n_heads == 0
    dist = abs(math.log(params_of(cfg)["total"] / target))
    grid = widths()
    i = grid.index(cfg.d_model)
    for j in (i - 1, i + 1):  # the neighbouring widths are not closer
        other = params_of(shape_config(base, grid[j], rule))["total"]
        assert abs(math.log(other / target)) >= dist
    assert dist < math.log(1.5)


def test_nearest_preset():
    assert nearest_preset(1.24e8)["preset"] == "gpt2-small"
    assert nearest_preset(1.4e5)["preset"] == "debug"  # moe-debug (total != active) is not offered
    assert nearest_preset(2.2e7)["preset"] == "tinystories-17m"


def test_predict_gives_n_d_intervals_and_shapes():
    law = Law(a=0.5, k_n=1.24e8 / 1e10, b=0.5, k_d=1e10 / 6 / 1.24e8)  # N_opt(1e20) = 124M
    rng = np.random.default_rng(0)
    a = 0.5 + rng.normal(0, 0.01, 100)
    samples = LawSamples(a, law.k_n * 1e20 ** (0.5 - a), 1 - a, law.k_d * 1e20 ** (a - 0.5))  # all pass 1e20
    result = FitResult(2, isoflop_runs(), law, None, samples)
    base = ModelConfig(vocab_size=50257, context_length=1024)
    (p,) = predict(result, [1e20], base, 1024, ShapeRule(aspect_ratio=64))
    assert np.isclose(p["N_opt"]["value"], 1.24e8) and p["N_opt"]["se"] < 1e6  # samples pivot at 1e20
    assert np.isclose(p["N_opt"]["value"] * p["D_opt"]["value"], 1e20 / 6)
    assert p["preset"]["preset"] == "gpt2-small"
    s = p["shape"]
    assert abs(math.log(s["params"] / 1.24e8)) < math.log(1.3) and s["n_layers"] == round(s["d_model"] / 64)
    assert np.isclose(s["tokens_for_budget"], 1e20 / s["train_flops_per_token"])
    (far,) = predict(result, [1e22], base, 1024)
    assert far["N_opt"]["ci95"][1] - far["N_opt"]["ci95"][0] > 0.1 * far["N_opt"]["value"]  # band widens
