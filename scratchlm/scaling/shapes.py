"""Model shapes for a parameter count: the nearest preset, and a depth/width rule.

The rule (`ShapeRule`), applied to a base `ModelConfig` whose other choices (vocab, context,
norms, MLP kind, tying, ...) it keeps:

- d_model runs over a grid: multiples of 8 from 16 to 128, of 16 to 256, of 32 to 512, of 64 beyond
  (64 keeps matmul tiles and head dims aligned; the finer steps give tiny CPU models usable size steps);
- n_layers = max(1, round(d_model / aspect_ratio)): a fixed aspect ratio d_model / n_layers
  (default 32; GPT-2 small has 64, Kaplan et al. 2020 find loss nearly flat for ratios ~20-200);
- head dim = the largest power of two <= min(max_head_dim, d_model / 4) dividing d_model (64 for
  d_model >= 256, smaller for tiny models so that they keep >= 4 heads), n_heads = d_model / head dim;
- d_ff, head_dim and n_kv_heads are reset to their defaults (d_ff follows d_model, multi-head attention);
- parameters grow with d_model, so a binary search finds the grid width whose model is closest to
  the target count (in log ratio). Counts are the model's own (`count_params`, "total": every
  parameter, embeddings included, tied ones once), the N of the runs table.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from scratchlm.errors import ScratchLMError
from scratchlm.model.config import ModelConfig


@dataclass
class ShapeRule:
    aspect_ratio: float = 32.0  # d_model / n_layers
    max_head_dim: int = 64  # head dim for wide models; tiny ones use d_model / 4 (power of two)
    max_width: int = 32768  # largest d_model considered

    def validate(self) -> None:
        if not self.aspect_ratio > 0:
            raise ScratchLMError(f"shape.aspect_ratio must be > 0, got {self.aspect_ratio}")
        if self.max_head_dim < 2 or self.max_width < 16:
            raise ScratchLMError(
                f"shape.max_head_dim must be >= 2 and shape.max_width >= 16, got {self.max_head_dim}, {self.max_width}"
            )


def widths(max_width: int = 32768) -> list[int]:
    grid = [*range(16, 128, 8), *range(128, 256, 16), *range(256, 512, 32), *range(512, max_width + 1, 64)]
    return grid


def head_dim_for(d_model: int, max_head_dim: int = 64) -> int:
    p = 2
    while p * 2 <= min(max_head_dim, d_model // 4) and d_model % (p * 2) == 0:
        p *= 2
    return p


def shape_config(base: ModelConfig, d_model: int, rule: ShapeRule) -> ModelConfig:
    n_layers = max(1, round(d_model / rule.aspect_ratio))
    n_heads = d_model // head_dim_for(d_model, rule.max_head_dim)
    return dataclasses.replace(
        base, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=0, head_dim=0, d_ff=0
    )


_PARAMS: dict[str, dict[str, int]] = {}  # repr(config) -> count_params: configs are not hashable


def _count(cfg: ModelConfig) -> dict[str, int]:
    key = repr(cfg)
    if key not in _PARAMS:
        from scratchlm.model.accounting import count_params

        _PARAMS[key] = count_params(cfg)
    return _PARAMS[key]


def params_of(cfg: ModelConfig) -> dict[str, int]:
    """count_params of a config (cached): "total", "embeddings", ... (see model.accounting).

    With one layer kind (layer_pattern of length 1) every block has the same parameters, so the
    count is extrapolated exactly from 1- and 2-layer models instead of building a deep one."""
    if cfg.n_layers <= 2 or len(set(cfg.layer_pattern)) > 1:
        return _count(cfg)
    one, two = _count(dataclasses.replace(cfg, n_layers=1)), _count(dataclasses.replace(cfg, n_layers=2))
    return {k: one[k] + (cfg.n_layers - 1) * (two[k] - one[k]) for k in one}


def rule_shape(target_params: float, base: ModelConfig, rule: ShapeRule | None = None) -> ModelConfig:
    """The rule's config whose total parameter count is closest to `target_params` (log ratio)."""
    rule = rule or ShapeRule()
    grid = widths(rule.max_width)
    lo, hi = 0, len(grid) - 1
    while lo < hi:  # first width with params >= target
        mid = (lo + hi) // 2
        if params_of(shape_config(base, grid[mid], rule))["total"] >= target_params:
            hi = mid
        else:
            lo = mid + 1
    options = [shape_config(base, grid[i], rule) for i in {max(lo - 1, 0), lo}]
    return min(options, key=lambda c: abs(math.log(params_of(c)["total"] / target_params)))


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """flops_per_token(cfg, seq_len)["train"], extrapolated exactly from 1- and 2-layer models when
    every layer is alike (FLOPs are linear in n_layers): building a 100-layer meta model is slow."""
    from scratchlm.model.accounting import flops_per_token

    if cfg.n_layers <= 2 or len(set(cfg.layer_pattern)) > 1:
        return flops_per_token(cfg, seq_len)["train"]
    one = flops_per_token(dataclasses.replace(cfg, n_layers=1), seq_len)["train"]
    two = flops_per_token(dataclasses.replace(cfg, n_layers=2), seq_len)["train"]
    return one + (cfg.n_layers - 1) * (two - one)


def describe(cfg: ModelConfig) -> dict[str, int]:
    p = params_of(cfg)
    return {
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "params": p["total"],
        "params_non_embedding": p["total"] - p["embeddings"],
    }


def nearest_preset(target_params: float) -> dict[str, object] | None:
    """The model preset (configs/model/*.toml, dense ones) whose total parameter count is closest."""
    from scratchlm.config import list_presets, load_config

    best = None
    for name in list_presets("model"):
        cfg = load_config(ModelConfig, "model", name)
        if cfg.moe.num_experts:  # total != active parameters: not comparable with a dense N
            continue
        n = params_of(cfg)["total"]
        dist = abs(math.log(n / target_params))
        if best is None or dist < best[0]:
            best = (dist, {"preset": name, **describe(cfg), "vocab_size": cfg.vocab_size})
    return None if best is None else best[1]
