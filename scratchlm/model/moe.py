"""Mixture of Experts feed-forward: a router sends each token to `top_k` of E expert FFNs.

    y = shared(x) + sum_{e in topk(x)} g_e(x) * expert_e(x)

Routing: p = softmax over all E router logits (fp32), keep the k largest. With
`moe.renormalize` (default, Mixtral, Jiang et al. 2024) those k gate weights are renormalised to
sum to 1, which equals a softmax over just the chosen logits, so the output scale does not depend
on E or k. Caveat: with top_k = 1 the single gate is then exactly 1 and carries no gradient, so
the router learns only from the auxiliary losses; `renormalize = false` keeps the softmax
probabilities as gates (Switch Transformer, Fedus et al. 2021), which is the usual choice for k = 1.

Experts are the model's FFN type (dense or gated, `cfg.mlp`) with hidden size `moe.d_expert or
ff_dim`, stored as batched tensors (E, out, in) in the `Linear` weight layout, so expert e is
`F.linear(x, w[e])`. Dispatch sorts the token->expert assignments by expert and runs one matmul per
expert on its contiguous slice of tokens (a grouped GEMM written as a loop):

- dropless (`capacity_factor = 0`): every token reaches all its k experts. Each token's output
  depends on that token only, so a MoE model stays causal.
- capacity (`capacity_factor = c > 0`): expert e takes at most C = ceil(c * N * k / E) of the
  N * k assignments of the batch, first come first served in token order (flattened (B, T) order;
  a token's k choices are consecutive). An overflowing assignment gets nothing from that expert:
  its gate-weighted term is dropped (the remaining gates are not renormalised) and the token keeps
  its residual stream (Switch Transformer, Fedus et al. 2021; GShard, Lepikhin et al. 2020).
  Tokens of a batch compete for capacity, so this mode is NOT causal: a later token (or another
  sequence) can take an earlier token's slot. Use it for training only; generate dropless.

Auxiliary losses of the last forward, summed into `self.aux_loss` (collected by
`TransformerLM.aux_loss()`):

- load balancing (Switch Transformer): aux_loss_coef * E * sum_e f_e * P_e, f_e the fraction of
  the N * k assignments routed to e (before capacity drops), P_e the mean router probability of
  e. Equals aux_loss_coef for a uniform router (P_e = 1/E), grows as routing concentrates.
- router z-loss (ST-MoE, Zoph et al. 2022): z_loss_coef * mean_tokens(logsumexp(logits)^2),
  keeping router logits small so the fp32 softmax stays well-conditioned.

Per-forward statistics for logging (detached): `tokens_per_expert` (E,) assignments each expert
processed, `dropped_tokens` assignments dropped by capacity, `balance_loss`, `z_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.model.config import ModelConfig
from scratchlm.model.mlp import MLPS, GatedMLP, build_ffn
from scratchlm.model.primitives import Linear, activation, trunc_normal_


class GroupedExperts(nn.Module):
    """E FFNs of one type as batched weights: up/gate (E, F, D), down (E, D, F), biases (E, F)/(E, D).

    Init (`reset_parameters`): up/gate normal(0, std), down normal(0, down_std) (the model passes
    std / sqrt(2L), as for every residual branch's last projection), truncated at 3 std; biases 0."""

    def __init__(
        self, num_experts: int, d_model: int, d_ff: int, mlp: str, bias: bool, ops: str = "torch",
        std: float = 0.02, down_std: float = 0.02,
    ):  # fmt: skip
        super().__init__()
        if mlp not in MLPS:
            raise ValueError(f"unknown mlp {mlp!r}: expected one of {', '.join(MLPS)}")
        cls, act = MLPS[mlp]
        E, D, Fh = num_experts, d_model, d_ff
        self.std, self.down_std = std, down_std
        self.act = activation(act, ops)
        self.gated = cls is GatedMLP
        self.w_up = nn.Parameter(torch.empty(E, Fh, D))
        self.w_gate = nn.Parameter(torch.empty(E, Fh, D)) if self.gated else None
        self.w_down = nn.Parameter(torch.empty(E, D, Fh))
        self.b_up = nn.Parameter(torch.empty(E, Fh)) if bias else None
        self.b_gate = nn.Parameter(torch.empty(E, Fh)) if bias and self.gated else None
        self.b_down = nn.Parameter(torch.empty(E, D)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for w in (self.w_up, self.w_gate):
            if w is not None:
                trunc_normal_(w, self.std)
        trunc_normal_(self.w_down, self.down_std)
        for b in (self.b_up, self.b_gate, self.b_down):
            if b is not None:
                b.zero_()

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert e on its tokens: (n, D) -> (n, D)."""

        def b(p: Tensor | None) -> Tensor | None:
            return None if p is None else p[e]

        h = F.linear(x, self.w_up[e], b(self.b_up))  # (n, F)
        h = self.act(F.linear(x, self.w_gate[e], b(self.b_gate))) * h if self.gated else self.act(h)
        return F.linear(h, self.w_down[e], b(self.b_down))  # (n, D)

    def forward(self, x: Tensor, counts: list[int]) -> Tensor:
        """x: (n, D) assignments sorted by expert, counts[e] of them for expert e -> (n, D)."""
        outs = [self.expert(e, xe) for e, xe in enumerate(x.split(counts)) if counts[e]]
        return torch.cat(outs) if outs else x.new_zeros(x.shape)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.moe
        self.num_experts, self.top_k = m.num_experts, m.top_k
        self.capacity_factor = m.capacity_factor
        self.gate_denominator = _sum_last if m.renormalize else _one
        self.aux_loss_coef, self.z_loss_coef = m.aux_loss_coef, m.z_loss_coef
        d_expert = m.d_expert or cfg.ff_dim
        s = cfg.init_std
        # Router: normal(0, s); experts as `GroupedExperts` documents, with the model's depth-scaled down std.
        self.router = Linear(cfg.d_model, m.num_experts, bias=False, std=s)
        self.experts = GroupedExperts(
            m.num_experts, cfg.d_model, d_expert, cfg.mlp, cfg.bias, cfg.ops, s, s / math.sqrt(2 * cfg.n_layers)
        )
        # The shared expert is an ordinary FFN module: its `down` is a residual_out Linear.
        self.shared = build_ffn(cfg.mlp, cfg.d_model, d_expert, cfg.bias, ops=cfg.ops) if m.shared_expert else None
        self.aux_loss: Tensor | None = None
        self.balance_loss: Tensor | None = None
        self.z_loss: Tensor | None = None
        self.tokens_per_expert: Tensor | None = None
        self.dropped_tokens: Tensor | None = None

    def capacity(self, n_tokens: int) -> int:
        """Most assignments one expert takes from N tokens: ceil(c * N * k / E); dropless: N, which
        no expert can exceed (a token picks an expert at most once)."""
        if self.capacity_factor == 0:
            return n_tokens
        return math.ceil(self.capacity_factor * n_tokens * self.top_k / self.num_experts)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D); sets aux_loss and the routing statistics."""
        B, T, D = x.shape
        E, k = self.num_experts, self.top_k
        xf = x.reshape(B * T, D)  # (N, D)
        logits = self.router(xf).float()  # (N, E)
        probs = torch.softmax(logits, dim=-1)  # (N, E)
        gates, idx = probs.topk(k, dim=-1)  # (N, k) each
        gates = gates / self.gate_denominator(gates)  # renormalised over the chosen k, or not (Switch)

        # Assignments in token order: assignment a = token * k + choice.
        expert = idx.reshape(-1)  # (N*k,)
        token = torch.arange(B * T, device=x.device).repeat_interleave(k)  # (N*k,)
        gate = gates.reshape(-1)  # (N*k,)
        # Group the assignments by expert; the stable sort keeps token order inside each group.
        order = torch.argsort(expert, stable=True)
        expert, token, gate = expert[order], token[order], gate[order]
        assigned = torch.bincount(expert, minlength=E)  # (E,) before capacity drops
        start = assigned.cumsum(0) - assigned  # (E,) first slot of each expert's group
        rank = torch.arange(expert.numel(), device=x.device) - start[expert]  # (N*k,) arrival order in its expert
        keep = rank < self.capacity(B * T)  # all of them when dropless
        expert, token, gate = expert[keep], token[keep], gate[keep]
        counts = torch.bincount(expert, minlength=E)  # (E,) processed per expert
        y = self.experts(xf.index_select(0, token), counts.tolist())  # (n, D)
        out = torch.zeros_like(xf).index_add(0, token, y * gate.unsqueeze(-1).to(y.dtype))  # (N, D)
        out = out.view(B, T, D)
        if self.shared is not None:
            out = out + self.shared(x)

        # Auxiliary losses (fp32).
        f = assigned.float() / (B * T * k)  # (E,) fraction of assignments
        P = probs.mean(dim=0)  # (E,) mean router probability
        self.balance_loss = self.aux_loss_coef * E * (f * P).sum()
        self.z_loss = self.z_loss_coef * torch.logsumexp(logits, dim=-1).square().mean()
        self.aux_loss = self.balance_loss + self.z_loss
        self.balance_loss, self.z_loss = self.balance_loss.detach(), self.z_loss.detach()
        self.tokens_per_expert = counts.detach()
        self.dropped_tokens = (assigned.sum() - counts.sum()).detach()
        return out

    def extra_repr(self) -> str:
        cap = f"capacity_factor={self.capacity_factor}" if self.capacity_factor > 0 else "dropless"
        return f"experts={self.num_experts}, top_k={self.top_k}, {cap}"


def _sum_last(g: Tensor) -> Tensor:
    return g.sum(dim=-1, keepdim=True)


def _one(g: Tensor) -> Tensor:
    return torch.ones((), dtype=g.dtype, device=g.device)
