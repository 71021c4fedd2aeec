"""Unstructured pruning, applied to a model from outside: magnitude pruning to a target sparsity and
2:4 semi-structured sparsity, with the masks kept so a recovery fine-tune can hold them.

    masks = magnitude_prune(model, 0.5, scope="global")   # {linear name: keep mask (out, in) bool}
    masks = semi_structured_24(model)                     # 2 of every 4 consecutive input weights kept
    handle = keep_masks(optimizer, model, masks)          # re-zero pruned weights after every step
    sparsity_report(model)["sparsity"]                    # fraction of zeros over the prunable linears
    to_semi_structured(model)                             # CUDA: 2:4 weights as torch's compressed tensors

Prunable linears are the `Linear`s inside `model.blocks` (attention q/k/v/o, MLP gate/up/down): never the
token embedding or the (often tied) output head, whose rows are whole tokens. `include`, a regular
expression searched in the qualified name ("blocks.3.ffn.f.down"), narrows the set.

Masks are "keep" masks (True = the weight stays), as in `torch.nn.utils.prune`. They are applied by
zeroing the weights in place and returned as a dict rather than installed as a parametrization:
a parametrization renames every weight (`parametrizations.weight.original`), which `save_model_dir`,
the HF export and the optimizer's parameter roles would all have to know about, and multiplies by the
mask in every forward. Re-zeroing after each optimizer step (`apply_masks`, or `keep_masks` which
registers it as the optimizer's step hook) keeps the model a plain `TransformerLM` at no forward cost.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from scratchlm.errors import InvalidArgument, ScratchLMError

SCOPES = ("global", "layer")


def prunable_linears(model: nn.Module, include: str | None = None) -> dict[str, nn.Linear]:
    """{qualified name: Linear} of the linears inside `model.blocks` whose name matches `include`."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise InvalidArgument(f"{type(model).__name__} has no `blocks`: expected a scratchlm TransformerLM")
    pattern = re.compile(include) if include else None
    linears = {
        f"blocks.{name}": m
        for name, m in blocks.named_modules()
        if isinstance(m, nn.Linear) and (pattern is None or pattern.search(f"blocks.{name}"))
    }
    if not linears:
        which = f" matching {include!r}" if include else ""
        raise InvalidArgument(f"the model has no linear layers{which} in its blocks: nothing to prune")
    return linears


def _check_sparsity(sparsity: float) -> None:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise InvalidArgument(f"sparsity must be in [0, 1), got {sparsity!r}")


def smallest_k(scores: Tensor, k: int) -> Tensor:
    """Bool mask, True at the `k` smallest entries of 1-D `scores`: exactly k, ties broken by position.

    A plain threshold (`scores <= kth value`) would prune every tied entry and overshoot the target
    (many weights are exactly 0 after a previous prune); this takes all entries below the k-th value
    and then only as many of the equal ones, first in order, as are still needed."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k <= 0:
        return mask
    kth = torch.kthvalue(scores, k).values
    below = scores < kth
    ties = (scores == kth).nonzero().squeeze(1)  # positions of the tied entries, in order
    mask |= below
    mask[ties[: k - int(below.sum())]] = True
    return mask


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Zero every weight whose mask entry is False (call after each optimizer step of a recovery fine-tune)."""
    modules = dict(model.named_modules())
    for name, keep in masks.items():
        w = modules[name].weight
        w.masked_fill_(~keep.to(w.device), 0.0)


def keep_masks(optimizer: torch.optim.Optimizer, model: nn.Module, masks: dict[str, Tensor]):
    """Hold `masks` through training: `apply_masks` runs after every `optimizer.step()`.

    Returns the hook handle (`handle.remove()` stops it). Pruned weights receive gradients and moments
    like any other, but are zeroed again before the next forward, so they never act."""
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: apply_masks(model, masks))


@torch.no_grad()
def magnitude_prune(
    model: nn.Module, sparsity: float, scope: str = "global", include: str | None = None
) -> dict[str, Tensor]:
    """Zero the `sparsity` fraction of smallest-|w| weights of the prunable linears; return the keep masks.

    scope="global": one ranking over all prunable weights (layers with small weights lose more);
    scope="layer": each linear loses round(sparsity * its size) weights. Exactly that many are zeroed
    (see `smallest_k`), so the sparsity is as asked up to one weight per ranking."""
    _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise InvalidArgument(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    linears = prunable_linears(model, include)
    if scope == "layer":
        pruned = {
            name: smallest_k(m.weight.abs().flatten(), round(sparsity * m.weight.numel()))
            for name, m in linears.items()
        }
    else:
        scores = torch.cat([m.weight.abs().flatten().float().cpu() for m in linears.values()])  # (N,)
        flat = smallest_k(scores, round(sparsity * scores.numel()))
        sizes = [m.weight.numel() for m in linears.values()]
        pruned = dict(zip(linears, flat.split(sizes)))
    masks = {name: ~p.view_as(linears[name].weight).to(linears[name].weight.device) for name, p in pruned.items()}
    apply_masks(model, masks)
    return masks


def mask_24(w: Tensor) -> Tensor:
    """Keep mask of 2:4 sparsity: in every group of 4 consecutive input weights of a row, the 2 largest |w|."""
    out, d_in = w.shape
    groups = w.abs().view(out, d_in // 4, 4)  # (out, in/4, 4)
    top = groups.topk(2, dim=-1).indices  # (out, in/4, 2)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return keep.view(out, d_in)


@torch.no_grad()
def semi_structured_24(model: nn.Module, include: str | None = None) -> dict[str, Tensor]:
    """2:4 sparsity (NVIDIA Ampere's sparse tensor cores) on every prunable linear; returns the keep masks.

    Every linear's input dimension must be a multiple of 4; all are checked before any weight changes."""
    linears = prunable_linears(model, include)
    bad = {name: m.in_features for name, m in linears.items() if m.in_features % 4}
    if bad:
        raise InvalidArgument(f"2:4 sparsity needs input dimensions divisible by 4; these are not: {bad}")
    masks = {name: mask_24(m.weight) for name, m in linears.items()}
    apply_masks(model, masks)
    return masks


def is_24(w: Tensor) -> bool:
    """Whether every group of 4 consecutive input weights of every row has at most 2 nonzeros."""
    out, d_in = w.shape
    return d_in % 4 == 0 and bool(((w.view(out, d_in // 4, 4) != 0).sum(-1) <= 2).all())


@torch.no_grad()
def sparsity_report(model: nn.Module, include: str | None = None) -> dict:
    """Fraction of zero weights per prunable linear and overall:
    {"linears": {name: {"zeros", "total", "sparsity"}}, "zeros", "total", "sparsity"}."""
    per = {}
    for name, m in prunable_linears(model, include).items():
        zeros, total = int((m.weight == 0).sum()), m.weight.numel()
        per[name] = {"zeros": zeros, "total": total, "sparsity": zeros / total}
    zeros, total = sum(r["zeros"] for r in per.values()), sum(r["total"] for r in per.values())
    return {"linears": per, "zeros": zeros, "total": total, "sparsity": zeros / total}


@torch.no_grad()
def to_semi_structured(model: nn.Module, include: str | None = None) -> dict[str, nn.Linear]:
    """Replace each 2:4-sparse prunable linear's weight by torch's compressed semi-structured tensor
    (`torch.sparse.to_sparse_semi_structured`: half the values plus 2-bit indices, multiplied on the
    sparse tensor cores). CUDA only; the weights must already be 2:4 (`semi_structured_24`), on a GPU,
    in float16/bfloat16 (or float32 through CUTLASS) with shapes torch accepts. Converts all or none.

    The converted weights are frozen (`requires_grad=False`): fine-tune before converting."""
    if not torch.cuda.is_available():
        raise ScratchLMError(
            "to_semi_structured needs CUDA: torch's 2:4 sparse kernels (CUTLASS / cuSPARSELt) run on NVIDIA "
            "GPUs only; keep the zeroed dense weights on CPU"
        )
    from torch.sparse import to_sparse_semi_structured

    linears = prunable_linears(model, include)
    not_24 = [name for name, m in linears.items() if not is_24(m.weight)]
    if not_24:
        raise InvalidArgument(f"these linears are not 2:4 sparse (run semi_structured_24 first): {not_24[:4]}")
    on_cpu = [name for name, m in linears.items() if m.weight.device.type != "cuda"]
    if on_cpu:
        raise InvalidArgument(f"move the model to CUDA first; these weights are not on a GPU: {on_cpu[:4]}")
    converted = {}
    for name, m in linears.items():  # every conversion first, so a refused shape or dtype changes nothing
        try:
            converted[name] = to_sparse_semi_structured(m.weight.detach())
        except RuntimeError as e:
            raise InvalidArgument(f"{name}: torch refuses its weight for 2:4 compression ({e})") from None
    for name, m in linears.items():
        m.weight = nn.Parameter(converted[name], requires_grad=False)
    return linears
