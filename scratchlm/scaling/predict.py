"""Predictions for a compute budget C: the optimal N and D (and, for Approach 3, the loss), with
bootstrap intervals, and concrete model shapes for that N.

For each budget: N_opt, D_opt and D_opt / N_opt from the fitted law; the loss L(N_opt, D_opt)
(Approach 3); the model preset (configs/model/) whose parameter count is closest to N_opt; and the
depth/width rule's shape (`shapes.ShapeRule`) on a base model config (vocab, context, MLP kind, ...),
with its own training FLOPs per token at `seq_len` and the tokens the budget buys it:
D = C / flops_per_token (a little under C / (6 N) where attention and the head weigh in).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scratchlm.scaling.laws import summarize


def predict(
    result, budgets: list[float], base_model=None, seq_len: int | None = None, rule=None
) -> list[dict[str, Any]]:
    if not budgets:
        return []
    from scratchlm.errors import ScratchLMError
    from scratchlm.model.config import ModelConfig
    from scratchlm.scaling.shapes import ShapeRule, describe, nearest_preset, rule_shape, train_flops_per_token

    base = base_model or ModelConfig()
    rule = rule or ShapeRule()
    law, s = result.law, result.samples
    out = []
    for c in budgets:
        if not (np.isfinite(c) and c > 0):
            raise ScratchLMError(f"prediction budget {c!r} must be a positive number of FLOPs")
        n, d = float(law.n_opt(c)), float(law.d_opt(c))
        ns = None if s is None else s.n_opt(c)[:, 0]
        ds = None if s is None else s.d_opt(c)[:, 0]
        row: dict[str, Any] = {
            "C": c,
            "N_opt": summarize(n, ns),
            "D_opt": summarize(d, ds),
            "tokens_per_param": summarize(d / n, None if s is None else ds / ns),
        }
        if result.approach == 3:
            from scratchlm.scaling.bootstrap import params_of
            from scratchlm.scaling.parametric import predict_loss

            loss_s = None
            if result.theta_samples is not None:
                loss_s = predict_loss(params_of(result.theta_samples), ns, ds)
            row["loss"] = summarize(float(predict_loss(result.params, n, d)), loss_s)
        row["preset"] = nearest_preset(n)
        cfg = rule_shape(n, base, rule)
        fpt = train_flops_per_token(cfg, seq_len or cfg.context_length)
        row["shape"] = {**describe(cfg), "train_flops_per_token": fpt, "tokens_for_budget": c / fpt}
        out.append(row)
    return out
