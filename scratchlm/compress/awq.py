"""AWQ (Lin et al. 2023, "Activation-aware Weight Quantization"): before rounding to nearest, scale each
input channel of a weight up by s (and its input down by s) so that the channels carrying large
activations lose less to rounding; the 1/s is folded into the op that produces the input, so the model
is exactly the same function before quantisation.

    quantize_model(model, QuantConfig(bits=4, group_size=64, method="awq"), calib=ids)   # ids (S, T)

Why it helps: W x = (W diag(s)) (x / s). Rounding W diag(s) group-wise costs each weight about the same
absolute error, so a channel scaled up by s has its *relative* error cut by s, and the error it adds to
the output is weighted by |x_j| / s_j. Channels with large mean |x_j| are the ones that matter.

Per group of linears reading one input (`scale_groups`), with X the calibration inputs of that input:

    s(alpha) = mean|X|^alpha, normalised by sqrt(max s * min s)   alpha on a grid of `awq_grid` points in [0, 1]
    alpha*   = argmin || X W^T - (X / s) Q(W diag(s))^T ||^2     over the group's (stacked) target weights

alpha = 0 is plain round to nearest, so on the calibration data AWQ never does worse than RTN per group.
The groups and where 1/s goes (a Llama block; pre-norm):

    q, k, v  <- the attention's input RMSNorm (its gain, and bias if any, divided by s)
    o        <- v's output rows: attention is linear in v, so scaling v's row c by 1/s scales o's input
                channels that read it; with GQA (kv_heads < n_heads) o's input h * Dh + d reads v's row
                (h // (n_heads / kv_heads)) * Dh + d, so one scale per v row is shared by the query heads
                of its group (its statistic: the mean of theirs)
    gate, up <- the MLP's input norm
    down     <- up's output rows: down reads act(gate) * up, linear in up (a gated MLP only)

Where no fold exists the group is left unscaled (round to nearest, with the clipping below): post-norm
blocks (no norm before q/k/v or the MLP), a dense MLP's down (a nonlinearity sits between up and down),
mixers other than `CausalSelfAttention` (MLA, linear attention, SSMs) and MoE experts, and the output head
(its norm is shared with nothing, but the head is tied to the embedding in most small models).

Then (`awq_clip`) the per-group weight clipping search: for each linear (but q and k, whose error passes
through the softmax, as the reference implementation), each (row, group) keeps the range shrink ratio in
1, 0.95, ..., 0.55 that minimises its share of the output error on the calibration inputs; clipped
weights are then rounded to nearest (`Int4Linear`). So the result is plain `Int4Linear` / `Int8Linear`
modules and modified norm gains and v / up rows: a quantised model directory saves and reloads as RTN's.

Blocks are processed in order (`gptq.blockwise`): block l's statistics come from inputs that passed
through blocks 0..l-1 already scaled and quantised. Within a block, one forward catches every group's
input; a fold changes only its own group's input (x / s), so the later groups' captured inputs stay valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from scratchlm.compress.gptq import blockwise, check_calibration, run_block
from scratchlm.compress.quant import QuantConfig, int4_params, quantized, round_int4, set_module


@dataclass
class ScaleGroup:
    """Linears that read one input, and the op before them that absorbs 1/s (None: no fold, no scaling)."""

    name: str  # "attn.qkv", "attn.o", "mlp.gate_up", "mlp.down", or the linear's own name when ungrouped
    linears: list[nn.Linear]
    prev: nn.Module | None  # a norm (gain / bias divided by s) or a linear (output rows divided by s)
    index: Tensor | None = None  # input channel j reads prev's channel index[j] (GQA's o); None: j reads j


def _norm(m: nn.Module) -> bool:
    from scratchlm.model.norms import Norm

    return isinstance(m, Norm)


def gqa_index(n_heads: int, kv_heads: int, head_dim: int) -> Tensor:
    """(n_heads * head_dim,): the v row that o's input channel h * head_dim + d reads."""
    rep = n_heads // kv_heads
    heads = torch.arange(n_heads) // rep  # (H,) the kv head of each query head
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def scale_groups(block: nn.Module) -> list[ScaleGroup]:
    """The foldable groups of one block (see the module docstring); linears outside them are not listed."""
    from scratchlm.model.attention import CausalSelfAttention
    from scratchlm.model.mlp import GatedMLP

    groups = []
    attn, ffn = getattr(block, "attn", None), getattr(block, "ffn", None)
    mixer = getattr(attn, "f", None)
    if isinstance(mixer, CausalSelfAttention):
        if _norm(attn.norm_in):
            groups.append(ScaleGroup("attn.qkv", [mixer.q_proj, mixer.k_proj, mixer.v_proj], attn.norm_in))
        index = gqa_index(mixer.n_heads, mixer.kv_heads, mixer.head_dim).to(mixer.o_proj.weight.device)
        groups.append(ScaleGroup("attn.o", [mixer.o_proj], mixer.v_proj, index))
    mlp = getattr(ffn, "f", None)
    if isinstance(mlp, GatedMLP):
        if _norm(ffn.norm_in):
            groups.append(ScaleGroup("mlp.gate_up", [mlp.gate, mlp.up], ffn.norm_in))
        groups.append(ScaleGroup("mlp.down", [mlp.down], mlp.up))
    return groups


# ---------------------------------------------------------------------------------------------- search
def fake_quant(w: Tensor, cfg: QuantConfig) -> Tensor:
    """Round to nearest and back (float32): what `quantized(..., cfg)` will hold, as a dense matrix."""
    n, k = w.shape
    if cfg.bits == 8:
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        return torch.round(w / scale).clamp_(-127, 127) * scale
    wg = w.view(n, k // cfg.group_size, cfg.group_size)
    scale, zero = int4_params(wg)
    return ((round_int4(wg, scale, zero) - zero[..., None]) * scale[..., None]).view(n, k)


@dataclass
class InputStats:
    """What the searches need of a linear's calibration inputs x (rows, K): mean |x| per channel and the
    Gram matrix G = x^T x / rows, so an output error mean((x dw^T)^2) costs N K^2, not rows N K, per try."""

    abs_mean: Tensor  # (K,)
    gram: Tensor  # (K, K) float32
    rows: int

    @classmethod
    def of(cls, x: Tensor) -> InputStats:
        """The statistics of inputs x (..., K) at once (the hooks of `capture` accumulate the same)."""
        x = x.detach().reshape(-1, x.shape[-1]).float()
        return cls(x.abs().mean(dim=0), (x.T.double() @ x.double() / x.shape[0]).float(), x.shape[0])

    def scaled(self, s_in: Tensor) -> InputStats:
        """The statistics of x / s_in."""
        return InputStats(self.abs_mean / s_in, self.gram / (s_in[:, None] * s_in[None, :]), self.rows)


def output_mse(stats: InputStats, dw: Tensor) -> float:
    """mean((x dw^T)^2) over the rows of x and the N outputs: the output error of a weight error dw (N, K)."""
    return ((dw @ stats.gram) * dw).sum().item() / dw.shape[0]


def channel_stat(stats: InputStats, index: Tensor | None, n_prev: int) -> Tensor:
    """mean |x| per input channel (K,), or per channel of the previous op (n_prev,) when inputs share one
    (GQA: the query heads reading one v row)."""
    stat = stats.abs_mean
    if index is None:
        return stat
    total = torch.zeros(n_prev, dtype=stat.dtype, device=stat.device).index_add_(0, index, stat)
    count = torch.zeros(n_prev, dtype=stat.dtype, device=stat.device).index_add_(0, index, torch.ones_like(stat))
    return total / count.clamp_min(1)


def scales_for(stat: Tensor, alpha: float) -> Tensor:
    """stat^alpha, kept away from 0 and centred (max * min = 1) so the scaled weights keep their magnitude."""
    s = stat.pow(alpha).clamp_min(1e-4)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def search_scale(
    stats: InputStats, w: Tensor, cfg: QuantConfig, index: Tensor | None = None, n_prev: int | None = None
) -> tuple[Tensor, float, list[float]]:
    """(scales of the previous op's channels, best alpha, output MSE per alpha) for weights w (N, K) on
    inputs with `stats`. Input channel j is scaled by s[index[j]] (index None: s[j])."""
    stat = channel_stat(stats, index, n_prev if index is not None else w.shape[1])
    errs, best = [], (math.inf, 0.0, torch.ones_like(stat))
    for alpha in torch.linspace(0, 1, cfg.awq_grid).tolist():
        s = scales_for(stat, alpha)
        s_in = s if index is None else s[index]  # (K,)
        err = output_mse(stats, fake_quant(w * s_in, cfg) / s_in - w)  # x Q(W s)^T / s against x W^T
        errs.append(err)
        if err < best[0]:
            best = (err, alpha, s)
    return best[2], best[1], errs


@torch.no_grad()
def search_clip(stats: InputStats, w: Tensor, cfg: QuantConfig, max_shrink: float = 0.5) -> Tensor:
    """w (N, K) with each (row, group) range shrunk by the ratio in 1, 1 - 1/grid, ... > 1 - max_shrink that
    minimises that group's own share of the output error, mean((x_group dq_group)^2) (the Gram's diagonal
    blocks: every calibration row counts, where the reference implementation samples 512)."""
    n, k = w.shape
    g = cfg.group_size
    gram = stats.gram.view(k // g, g, k // g, g).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (G, g, g)
    wg = w.view(n, k // g, g)  # (N, G, g)
    lo, hi = wg.amin(dim=-1, keepdim=True).clamp(max=0), wg.amax(dim=-1, keepdim=True).clamp(min=0)
    best_err = torch.full((n, k // g), math.inf, device=w.device)
    best = torch.ones(n, k // g, 1, device=w.device)
    for i in range(round(max_shrink * cfg.awq_grid)):
        r = 1 - i / cfg.awq_grid
        wc = torch.minimum(torch.maximum(wg, lo * r), hi * r)
        dq = fake_quant(wc.view(n, k), cfg).view(n, k // g, g) - wg  # (N, G, g)
        err = (torch.einsum("ngi,gij->ngj", dq, gram) * dq).sum(dim=-1)  # (N, G)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best[better] = r
    return torch.minimum(torch.maximum(wg, lo * best), hi * best).view(n, k)


# ---------------------------------------------------------------------------------------------- folding
@torch.no_grad()
def fold(group: ScaleGroup, s: Tensor) -> None:
    """Divide the previous op's output channels by s and multiply the group's input channels by s: the
    block computes the same function (exactly, up to float rounding)."""
    prev = group.prev
    s_in = s if group.index is None else s[group.index]
    if isinstance(prev, nn.Linear):  # v or up: its output rows
        prev.weight.copy_(prev.weight.float() / s[:, None])
    else:  # a norm's gain
        prev.weight.copy_(prev.weight.float() / s)
    if getattr(prev, "bias", None) is not None:
        prev.bias.copy_(prev.bias.float() / s)
    for lin in group.linears:
        lin.weight.copy_(lin.weight.float() * s_in[None, :])


def capture(linears: list[nn.Linear]) -> tuple[dict[int, list], list]:
    """Forward pre-hooks accumulating [sum |x|, sum x^T x (float64 across calls), rows] of each linear's
    inputs, keyed by id(linear)."""
    acc: dict[int, list] = {id(m): [0.0, 0.0, 0] for m in linears}
    handles = []
    for m in linears:

        def hook(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # (rows, K)
            a = acc[id(mod)]
            a[0] = a[0] + x.abs().sum(dim=0).double()
            a[1] = a[1] + (x.T @ x).double()
            a[2] += x.shape[0]

        handles.append(m.register_forward_pre_hook(hook))
    return acc, handles


def input_stats(acc: list) -> InputStats | None:
    """The accumulated sums as means; None for a linear that never ran (an unused expert)."""
    abs_sum, xtx, rows = acc
    return None if rows == 0 else InputStats((abs_sum / rows).float(), (xtx / rows).float(), rows)


@dataclass
class GroupReport:
    name: str  # the group's first linear, e.g. blocks.3.attn.f.q_proj
    alpha: float | None  # None: not scaled (no fold)
    mse_rtn: float  # output MSE of the group's targets on the calibration inputs, alpha = 0 (plain RTN)
    mse_awq: float  # ... with the chosen scales (before clipping)


@torch.no_grad()
def awq_quantize(
    model: nn.Module, cfg: QuantConfig, calib: Tensor | None, targets: dict[str, nn.Linear], batch: int = 8
) -> list[GroupReport]:
    """Scale, clip and quantise `targets` of `model` in place (module docstring); one report per scaled group."""
    check_calibration(calib, "AWQ")
    names = {id(m): n for n, m in targets.items()}
    reports: list[GroupReport] = []

    def per_block(block: nn.Module, linears: dict[str, nn.Linear], inputs) -> None:
        groups = [g for g in scale_groups(block) if any(id(lin) in names for lin in g.linears)]
        grouped = {id(lin) for g in groups for lin in g.linears}
        # targets no fold reaches: clipping only, on their own inputs
        groups += [ScaleGroup(n, [m], None) for n, m in linears.items() if id(m) not in grouped]
        seen, handles = capture([g.linears[0] for g in groups])
        run_block(block, inputs, handles)
        mixer = getattr(getattr(block, "attn", None), "f", None)
        no_clip = {id(getattr(mixer, p, None)) for p in ("q_proj", "k_proj")}
        xs = []
        for g in groups:  # every fold first: o's fold changes v's rows, down's up's, after their groups' turn
            x = input_stats(seen[id(g.linears[0])])
            todo = [lin for lin in g.linears if id(lin) in names]
            if g.prev is not None and x is not None:
                w = torch.cat([lin.weight.float() for lin in todo])  # (N, K) the group's targets, stacked
                s, alpha, errs = search_scale(x, w, cfg, g.index, g.prev.weight.shape[0])
                fold(g, s)
                x = x.scaled(s if g.index is None else s[g.index])
                reports.append(GroupReport(names[id(todo[0])], alpha, errs[0], min(errs)))
            xs.append((x, todo))
        # (a whole row scaled by one factor rounds to the same levels, so the later row folds leave the
        # searches of v and up valid)
        for x, todo in xs:
            for lin in todo:
                if cfg.awq_clip and cfg.bits == 4 and x is not None and id(lin) not in no_clip:
                    lin.weight.copy_(search_clip(x, lin.weight.float(), cfg))
                set_module(model, names[id(lin)], quantized(lin, cfg))

    def rest_fn(rest: dict[str, nn.Linear]) -> None:  # the head: round to nearest (see the module docstring)
        for n, m in rest.items():
            set_module(model, n, quantized(m, cfg))

    blockwise(model, targets, calib, batch, per_block, rest_fn)
    return reports
