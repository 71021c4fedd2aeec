"""Budget planning: candidate (N, D) pairs along an IsoFLOP line, as concrete trainable runs.

For a budget C (training FLOPs), `sizes` target parameter counts are spread log-uniformly over
[N0 / spread, N0 * spread] around a centre N0: Chinchilla's ~20 tokens per parameter
(N0 = sqrt(C / 120), from C = 6 N D with D = 20 N) or the N_opt(C) of an earlier fit.json. Each
target becomes a shape by the depth/width rule (`shapes.rule_shape`) on the training preset's
model; its tokens come from the model's OWN training FLOPs per token at the run's sequence length
(`model.accounting.flops_per_token(cfg, seq_len)["train"]`, attention included), not from 6N:
D = C / flops_per_token, rounded to whole optimizer steps of batch x accumulation x seq_len tokens.
Targets that round to the same shape are merged (with a warning).

The plan is a sweep spec for `scratchlm.train.sweep` (`scratchlm sweep run`): one point per run
setting model.d_model / n_layers / n_heads, steps and schedule.warmup_steps (the preset's, capped
at a tenth of the run so that short runs still decay), plus shared overrides resetting d_ff,
head_dim and n_kv_heads so that they follow d_model.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scratchlm.errors import ScratchLMError
from scratchlm.scaling.config import StudyConfig

log = logging.getLogger(__name__)

CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022: D_opt ~ 20 N_opt
RESETS = {"model.d_ff": 0, "model.head_dim": 0, "model.n_kv_heads": 0}  # follow d_model


@dataclass
class PlanRow:
    budget: float  # the IsoFLOP budget this run belongs to
    target_params: float  # the N the rule aimed for
    d_model: int
    n_layers: int
    n_heads: int
    params: int  # all parameters (embeddings included): the N of the runs table
    params_non_embedding: int
    train_flops_per_token: float
    steps: int
    tokens: int  # steps x tokens per step
    compute: float  # tokens x train_flops_per_token: the realised budget
    warmup_steps: int

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    def point(self) -> dict[str, Any]:
        """The sweep point (training overrides) of this run."""
        return {
            "model.d_model": self.d_model,
            "model.n_layers": self.n_layers,
            "model.n_heads": self.n_heads,
            "steps": self.steps,
            "schedule.warmup_steps": self.warmup_steps,
        }


def train_config(study: StudyConfig):
    """The training config every run starts from: the preset plus the study's shared overrides."""
    from scratchlm.config import load_config
    from scratchlm.train.config import TrainConfig

    overrides = [f"{k}={json.dumps(v)}" for k, v in {**RESETS, **study.train_set}.items()]
    return load_config(TrainConfig, "train", study.train_preset, overrides)


def centre(study: StudyConfig):
    """C -> N0, the middle of each IsoFLOP slice."""
    if study.center == "chinchilla":
        return lambda c: math.sqrt(c / (6 * CHINCHILLA_TOKENS_PER_PARAM))
    from scratchlm.io import read_json

    data = read_json(study.center, "scaling fit (fit.json)")
    try:
        k_n, a = data["allocation"]["k_N"]["value"], data["allocation"]["a"]["value"]
    except (KeyError, TypeError):
        raise ScratchLMError(f"{study.center} is not a scaling fit.json (no allocation.k_N / allocation.a)") from None
    return lambda c: k_n * c**a


def plan_budget(budget: float, study: StudyConfig, train_cfg=None) -> list[PlanRow]:
    """The runs of one IsoFLOP slice (see the module docstring)."""
    from scratchlm.scaling.shapes import params_of, rule_shape, train_flops_per_token

    cfg = train_cfg or train_config(study)
    seq, per_step = cfg.context, cfg.tokens_per_step
    n0 = centre(study)(budget)
    offsets = np.linspace(-1.0, 1.0, study.sizes) if study.sizes > 1 else np.zeros(1)
    rows: list[PlanRow] = []
    for target in n0 * study.spread**offsets:  # log-uniform in [N0 / spread, N0 * spread]
        shape = rule_shape(target, cfg.model, study.shape)
        if any(r.d_model == shape.d_model for r in rows):
            log.warning("budget %.3g: target N %.3g gives the same shape as a smaller target (d_model %d); merged",
                        budget, target, shape.d_model)  # fmt: skip
            continue
        p = params_of(shape)
        fpt = train_flops_per_token(shape, seq)
        steps = max(1, round(budget / fpt / per_step))
        if steps < study.min_steps:
            log.warning("budget %.3g: the d_model=%d model gets only %d steps (min_steps %d): raise the budget",
                        budget, shape.d_model, steps, study.min_steps)  # fmt: skip
        tokens = steps * per_step
        warmup = min(cfg.schedule.warmup_steps, steps // 10)
        rows.append(
            PlanRow(budget, float(target), shape.d_model, shape.n_layers, shape.n_heads, p["total"],
                    p["total"] - p["embeddings"], fpt, steps, tokens, tokens * fpt, warmup)
        )  # fmt: skip
    return rows


def plan_study(study: StudyConfig) -> list[PlanRow]:
    if not study.budgets:
        raise ScratchLMError("no budgets given: --budget(s) C1 C2 ..., or budgets = [...] in the --spec file")
    cfg = train_config(study)
    return [row for b in sorted(study.budgets) for row in plan_budget(b, study, cfg)]


def sweep_spec(study: StudyConfig, rows: list[PlanRow], runs_dir: str | Path) -> dict[str, Any]:
    """A `scratchlm.train.sweep` spec (the load_spec TOML layout) training every planned run."""
    return {
        "preset": study.train_preset,
        "out_dir": str(runs_dir),
        "parallel": study.parallel,
        "set": {**RESETS, **study.train_set},
        "points": [r.point() for r in rows],
    }


def write_spec(spec: dict[str, Any], path: str | Path) -> None:
    import tomli_w

    from scratchlm.io import atomic_write

    header = "# IsoFLOP sweep written by `scratchlm scaling plan`; run it with `scratchlm sweep run FILE`.\n"
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(header + tomli_w.dumps(spec))


def plan_json(rows: list[PlanRow]) -> list[dict[str, Any]]:
    return [{**asdict(r), "tokens_per_param": r.tokens_per_param} for r in rows]


def format_plan(rows: list[PlanRow]) -> str:
    head = f"{'budget':>9} {'d_model':>7} {'layers':>6} {'heads':>5} {'params':>10} {'non-emb':>10} "
    head += f"{'FLOPs/tok':>10} {'steps':>7} {'tokens':>11} {'tok/param':>9} {'compute':>9}"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r.budget:9.3g} {r.d_model:7d} {r.n_layers:6d} {r.n_heads:5d} {r.params:10,d} "
            f"{r.params_non_embedding:10,d} {r.train_flops_per_token:10.3g} {r.steps:7d} {r.tokens:11,d} "
            f"{r.tokens_per_param:9.3g} {r.compute:9.3g}"
        )
    total = sum(r.compute for r in rows)
    lines.append(f"{len(rows)} runs, {total:.3g} training FLOPs in all")
    return "\n".join(lines)
