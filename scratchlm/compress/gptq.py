"""GPTQ (Frantar et al. 2022): quantise a linear layer's columns one at a time, pushing each column's
rounding error onto the columns not yet quantised, weighted by the inverse Hessian of the layer's
reconstruction error ||X W^T - X Q^T||^2, whose Hessian is H = 2 X^T X (X: the layer's calibration inputs).

    quantize_model(model, QuantConfig(bits=4, group_size=128, method="gptq"), calib=ids)   # ids (S, T)

Per layer (`gptq_weight`): H += damp * mean(diag H) * I (inputs that never fire: H_ii = 1, their weight
column 0); U = upper Cholesky factor of H^-1; then for column i (in blocks of `block` columns, the
"lazy batch" update that makes it matrix-matrix work):

    q_i = quant(w_i);  e_i = (w_i - q_i) / U_ii;  w_j -= e_i U_ij  for the later columns j

Group parameters (int4 scale / zero) are computed from the *updated* weights when the first column of a
group is reached, as the reference implementation does. With act_order the columns are visited in order
of decreasing diag(H) (the most-used inputs first, while the most freedom is left to compensate).

Across layers the model is processed block by block: the Hessians of block l's linears come from inputs
that have gone through blocks 0..l-1 already quantised, so later blocks compensate earlier blocks' error.
Block 0's inputs are caught once and carried from block to block (one pass over the calibration data per
block). (Within a block all linears see the unquantised block; AutoGPTQ's `true_sequential` splits further.)

What made GPTQ beat round to nearest on SmolLM2-135M (int4, group 64; benchmarks/results/gptq.md):
act_order, whose groups take their range from the original weights. Without it GPTQ was no better than RTN
over the whole model (tinystories: worse) although each layer's output error on held-out text was 0.2-0.55x
RTN's, except the MLP down projections: their inputs are heavy-tailed (channel kurtosis ~40), so with few
calibration rows GPTQ overfits them (held-out error against RTN's, block 3, by calibration tokens: 4k (tail)
1.25, 16k 0.96, 33k 0.91, 66k 0.89), which more calibration only partly cures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from scratchlm.compress.quant import (
    Int4Linear,
    Int8Linear,
    QuantConfig,
    int4_params,
    round_int4,
    set_module,
)
from scratchlm.errors import InvalidArgument


class _Stop(Exception):
    """Raised by a hook to end a calibration forward once the block being quantised has run."""


def hessian_hooks(linears: dict[str, nn.Linear]) -> tuple[dict[str, Tensor], dict[str, int], list]:
    """Forward pre-hooks accumulating sum x x^T (float64 across calls) and the row count of each linear's inputs.

    Each call's x^T x is a float32 matmul (as the reference implementation; float64 matmuls cost 2x on CPU),
    and linears that read the very tensor the previous hook read (q/k/v, gate/up) reuse its product."""
    hs = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64, device=m.weight.device)
          for n, m in linears.items()}  # fmt: skip
    counts = dict.fromkeys(linears, 0)
    last: list = [None, None]  # the previous hook's input tensor (kept alive, so `is` is safe) and x^T x
    handles = []
    for name, m in linears.items():

        def hook(mod, args, name=name):
            if args[0] is not last[0]:
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # (rows, K)
                last[0], last[1] = args[0], (x.T @ x).double()
            hs[name] += last[1]
            counts[name] += args[0].numel() // args[0].shape[-1]

        handles.append(m.register_forward_pre_hook(hook))
    return hs, counts, handles


@torch.no_grad()
def gptq_weight(w: Tensor, h: Tensor, cfg: QuantConfig) -> tuple[Tensor, Tensor, Tensor]:
    """GPTQ of one weight w (N, K) with Hessian h (K, K): (levels q (N, K), scale, zero).

    int8: q in [-127, 127], scale (N,) fixed up front, zero empty; int4: q in [0, 15], scale / zero (N, K/g)."""
    w = w.detach().float().clone()  # the column loop in float32, as the reference; the factorisation in float64
    n, k = w.shape
    h = h.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(cfg.damp * torch.mean(torch.diag(h)))
    g = cfg.group_size if cfg.bits == 4 else k
    scales = torch.zeros(n, k // g, device=w.device)
    zeros = torch.zeros_like(scales)
    if cfg.bits == 8:
        scales[:, 0] = w.abs().amax(dim=1).clamp_min(1e-12) / 127
    elif cfg.act_order:  # the update order no longer reaches a group's columns together: fix its range first
        scales, zeros = int4_params(w.view(n, k // g, g))
    perm = torch.argsort(torch.diag(h), descending=True) if cfg.act_order else torch.arange(k, device=w.device)
    w, h = w[:, perm], h[perm][:, perm]
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()  # (K, K)

    q = torch.zeros_like(w)
    for b0 in range(0, k, cfg.block):
        b1 = min(b0 + cfg.block, k)
        err = torch.zeros(n, b1 - b0, device=w.device)
        for i in range(b0, b1):
            col = w[:, i]
            grp = int(perm[i]) // g  # the column's group in the original order
            if cfg.bits == 8:
                qi = torch.round(col / scales[:, 0]).clamp(-127, 127)
                deq = qi * scales[:, 0]
            else:
                if not cfg.act_order and i % g == 0:  # a new group: its range from the updated weights
                    scales[:, grp], zeros[:, grp] = int4_params(w[:, i : i + g])
                s, z = scales[:, grp], zeros[:, grp]
                qi = round_int4(col[:, None], s, z)[:, 0]
                deq = (qi - z) * s
            q[:, i] = qi
            e = (col - deq) / u[i, i]  # the error, pushed onto the later columns of the block ...
            w[:, i + 1 : b1].addr_(e, u[i, i + 1 : b1], alpha=-1.0)
            err[:, i - b0] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]  # ... and onto the columns after it, once per block
    q = q[:, torch.argsort(perm)]
    if cfg.bits == 8:
        return q, scales[:, 0].float(), torch.empty(0)
    return q, scales.float(), zeros


def shared_inputs(hs: dict[str, Tensor]) -> list[list[str]]:
    """Names grouped by equal Hessians: linears reading the same input (q/k/v, gate/up). GPTQ treats the
    rows of a weight independently given H, so their stacked rows are quantised in one pass."""
    groups: list[list[str]] = []
    for name, h in hs.items():
        for g in groups:
            if torch.equal(hs[g[0]], h):
                g.append(name)
                break
        else:
            groups.append([name])
    return groups


@torch.no_grad()
def gptq_layers(linears: list[nn.Linear], h: Tensor, cfg: QuantConfig) -> list[nn.Module]:
    """The quantised modules replacing `linears` (all reading one input), given its Hessian 2 X^T X / rows."""
    q, scale, zero = gptq_weight(torch.cat([lin.weight for lin in linears]), h, cfg)
    out, row = [], 0
    for lin in linears:
        rows = slice(row, row + lin.out_features)
        row += lin.out_features
        if cfg.bits == 4:
            out.append(Int4Linear.from_levels(q[rows], scale[rows], zero[rows], cfg.group_size, lin.bias))
            continue
        m = Int8Linear(lin.in_features, lin.out_features, lin.bias is not None).to(lin.weight.device)
        m.qweight, m.scale = q[rows].to(torch.int8).contiguous(), scale[rows].contiguous()
        if lin.bias is not None:
            m.bias.data.copy_(lin.bias)
        out.append(m)
    return out


def block_inputs(model: nn.Module, first: nn.Module, calib: Tensor, batch: int) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) of `first` (block 0) for each calibration batch: the forward stops there."""
    caught = []

    def catch(mod, args, kwargs):
        caught.append((args, kwargs))
        raise _Stop

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for rows in calib.split(batch):
            try:
                model(rows)
            except _Stop:
                pass
    finally:
        handle.remove()
    return caught


def quantize_group(model: nn.Module, linears: dict[str, nn.Linear], hs, counts, cfg: QuantConfig) -> None:
    for names in shared_inputs(hs):
        h = hs[names[0]] * (2.0 / max(counts[names[0]], 1))
        for name, module in zip(names, gptq_layers([linears[n] for n in names], h, cfg), strict=True):
            set_module(model, name, module)


def check_calibration(calib, what: str) -> None:
    if calib is None or not torch.is_tensor(calib) or calib.dim() != 2 or calib.numel() == 0:
        raise InvalidArgument(f"{what} needs calibration token ids: a non-empty (sequences, tokens) tensor")


BlockFn = Callable[[nn.Module, dict[str, nn.Linear], list[tuple[tuple, dict]]], None]


def run_block(block: nn.Module, inputs, handles: list) -> None:
    """Run `block` on each captured (args, kwargs) for its hooks to see, then remove the hooks (even on error)."""
    try:
        for args, kwargs in inputs:
            block(*args, **kwargs)
    finally:
        for hd in handles:
            hd.remove()


@torch.no_grad()
def blockwise(
    model: nn.Module,
    targets: dict[str, nn.Linear],
    calib: Tensor,
    batch: int,
    per_block: BlockFn,
    rest_fn: Callable[[dict[str, nn.Linear]], None],
) -> None:
    """Run `per_block(block, its targets, its cached inputs)` on each block holding targets, in order, then
    `rest_fn(targets outside the blocks)` (the head) if any. Shared by GPTQ and AWQ (awq.py).

    The inputs of block 0 are caught once; each block is then processed (it may swap its linears, fold
    scales) and runs again to give the next block its inputs, now through the processed block: one pass
    over the calibration data per block, not a forward from the embedding. This relies on what
    `TransformerLM.hidden` does: block l + 1 reads block l's output as its first argument and the same
    other arguments (the step context)."""
    device = next(model.parameters()).device
    calib = calib.to(device)
    was_training = model.training
    model.eval()
    found = getattr(model, "blocks", None)
    named = list(found.items()) if isinstance(found, nn.ModuleDict) else list(enumerate(found or []))
    blocks = [b for _, b in named]
    groups = [{n: m for n, m in targets.items() if n.startswith(f"blocks.{key}.")} for key, _ in named]
    rest = {n: m for n, m in targets.items() if not any(n in g for g in groups)}
    try:
        if any(groups):
            inputs = block_inputs(model, blocks[0], calib, batch)
            last = max(i for i, g in enumerate(groups) if g)
            for i, (block, linears) in enumerate(zip(blocks[: last + 1], groups, strict=False)):
                if linears:
                    per_block(block, linears, inputs)
                if i < last:  # the next block's inputs, through this (processed) block
                    inputs = [((block(*args, **kwargs), *args[1:]), kwargs) for args, kwargs in inputs]
        if rest:
            rest_fn(rest)
    finally:
        model.train(was_training)


@torch.no_grad()
def gptq_quantize(
    model: nn.Module, cfg: QuantConfig, calib: Tensor | None, targets: dict[str, nn.Linear], batch: int = 8
) -> None:
    """Quantise `targets` of `model` in place with GPTQ, block by block (`blockwise`), on calibration ids
    (S, T): each block runs on its cached inputs collecting its linears' Hessians, then is quantised.
    Targets outside the blocks (the head) are quantised last, from a full forward."""
    check_calibration(calib, "GPTQ")

    def per_block(block: nn.Module, linears: dict[str, nn.Linear], inputs) -> None:
        hs, counts, handles = hessian_hooks(linears)
        run_block(block, inputs, handles)
        quantize_group(model, linears, hs, counts, cfg)

    def rest_fn(rest: dict[str, nn.Linear]) -> None:  # the head: after every block is quantised
        hs, counts, handles = hessian_hooks(rest)
        try:
            for rows in calib.split(batch):
                model(rows.to(next(model.parameters()).device))
        finally:
            for hd in handles:
                hd.remove()
        quantize_group(model, rest, hs, counts, cfg)

    blockwise(model, targets, calib, batch, per_block, rest_fn)
