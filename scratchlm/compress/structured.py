"""Structured pruning that makes the model smaller: MLP neurons, attention heads and whole layers ranked by
activation-based importance on calibration batches (Minitron: Muralidharan et al. 2024, "Compact Language
Models via Pruning and Knowledge Distillation"), then copied into a new, smaller `TransformerLM`.

    calib = token_ids[:64, :256]                                       # (N, T) long: calibration batches
    small = prune_structured(model, calib, d_ff=1024, n_layers=24)     # a new model; `model` is untouched
    save_model_dir(small, chat, "smollm2-pruned")                      # same tokenizer, smaller config

Importance (`importance`), one forward pass over the calibration tokens with hooks, averaged over tokens:
- neuron j of layer l: mean |a_j|, a = act(gate(x)) * up(x) the input of the down projection;
- head h of layer l: mean L2 norm of the head's attention output (its Dh slice of o_proj's input);
- layer l: block importance 1 - mean cos(x_in, x_out) of the block's input and output hidden states
  (ShortGPT, Men et al. 2024; Minitron's "BI"): a block that barely turns the residual stream matters
  little. Or, with layer_method="loss", the increase of the calibration LM loss when the block is
  skipped (Minitron's other depth metric; one forward per layer).
Minitron found one-shot estimation as good as iterating, so all three come from the unpruned model.

The config is uniform (one n_heads, n_kv_heads, d_ff for every layer), so every layer keeps the same
number of each: its own most important ones, in their original order.

GQA: query head h reads KV head h // (H / K). The config stays valid if each kept KV group keeps the
same number of query heads. `n_heads` alone keeps every KV head and drops the least important query
heads of each group (the same number per group): K and V projections are a small part of a GQA layer
(SmolLM2: 3 of 9 heads) and each kept query still reads the keys and values it was trained with.
`n_kv_heads` also drops whole KV groups (ranked by the summed importance of their query heads), which
shrinks the KV cache too, at the price of removing every query that used the group.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.errors import InvalidArgument
from scratchlm.model.attention import CausalSelfAttention
from scratchlm.model.mlp import DenseMLP, GatedMLP

LAYER_METHODS = ("cosine", "loss")


@dataclass
class Importance:
    """Activation-based importance of each prunable unit of a model (higher = keep)."""

    neurons: Tensor  # (L, F): mean |input of the down projection|
    heads: Tensor  # (L, H): mean L2 norm of each head's output before o_proj
    layers: Tensor  # (L,): 1 - mean cos(block input, block output), or the loss increase when skipped


@dataclass
class Keep:
    """What one layer keeps, as indices into the original layer (query heads grouped by KV head)."""

    q_heads: Tensor  # (H',) long
    kv_heads: Tensor  # (K',) long
    neurons: Tensor  # (F',) long


# ---------------------------------------------------------------------------------------------- checks
def check_model(model: nn.Module) -> None:
    """Structured pruning knows softmax attention (MHA / GQA / MQA) and dense or gated MLPs."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        raise InvalidArgument(f"{type(model).__name__} has no blocks: expected a scratchlm TransformerLM")
    for i, block in blocks.items():
        if not isinstance(block.mixer, CausalSelfAttention):
            raise InvalidArgument(
                f"layer {i} mixes with {type(block.mixer).__name__}: structured pruning needs softmax attention"
            )
        if not isinstance(block.mlp, (GatedMLP, DenseMLP)):
            raise InvalidArgument(
                f"layer {i} has a {type(block.mlp).__name__} feed-forward: structured pruning needs a dense or gated "
                "MLP (not MoE)"
            )


def check_calibration(model: nn.Module, tokens: Tensor) -> None:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long or tokens.numel() == 0:
        got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
        raise InvalidArgument(f"calibration tokens must be a non-empty (N, T) long tensor, got {got}")
    cfg = model.config
    if tokens.shape[1] < 2 or tokens.shape[1] > cfg.context_length:
        raise InvalidArgument(
            f"calibration sequences must have 2..{cfg.context_length} tokens (the context), got {tokens.shape[1]}"
        )
    if int(tokens.min()) < 0 or int(tokens.max()) >= cfg.vocab_size:
        raise InvalidArgument(f"calibration token ids must be in [0, {cfg.vocab_size}), the vocabulary")


def calibration_tokens(ids, n: int, length: int) -> Tensor:
    """(n, length) calibration batch: the first n * length of token ids `ids` (a list or 1-D tensor) in
    consecutive non-overlapping rows. Minitron calibrates on 1024 samples; a few dozen rank SmolLM2's units
    stably enough for a one-shot prune."""
    if n < 1 or length < 2:
        raise InvalidArgument(f"calibration needs n >= 1 sequences of length >= 2, got n={n}, length={length}")
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if len(ids) < n * length:
        raise InvalidArgument(
            f"calibration data has {len(ids)} tokens, fewer than the {n} x {length} = {n * length} asked: "
            "give more text or fewer/shorter sequences"
        )
    return ids[: n * length].view(n, length)  # (N, T)


# ---------------------------------------------------------------------------------------------- importance
def batches(tokens: Tensor, batch_size: int, device: torch.device):
    for lo in range(0, len(tokens), batch_size):
        yield tokens[lo : lo + batch_size].to(device)


@torch.no_grad()
def importance(model: nn.Module, calib_tokens: Tensor, batch_size: int = 8, layer_method: str = "cosine") -> Importance:
    """Neuron, head and layer importance from forward hooks over `calib_tokens` (N, T); see the module docstring."""
    check_model(model)
    check_calibration(model, calib_tokens)
    if layer_method not in LAYER_METHODS:
        raise InvalidArgument(f"layer_method must be one of {', '.join(LAYER_METHODS)}, got {layer_method!r}")
    blocks = list(model.blocks.values())
    H, Dh = blocks[0].mixer.n_heads, blocks[0].mixer.head_dim
    neurons = [torch.zeros(b.mlp.down.in_features, dtype=torch.float64) for b in blocks]
    heads = [torch.zeros(H, dtype=torch.float64) for _ in blocks]
    turn = torch.zeros(len(blocks), dtype=torch.float64)

    def on_down(i):
        def hook(module, args):
            neurons[i] += args[0].detach().abs().flatten(0, -2).double().sum(0).cpu()  # (B, T, F) -> (F,)

        return hook

    def on_o_proj(i):
        def hook(module, args):
            y = args[0].detach()  # (B, T, H * Dh)
            heads[i] += y.unflatten(-1, (H, Dh)).double().norm(dim=-1).flatten(0, -2).sum(0).cpu()  # (H,)

        return hook

    def on_block(i):
        def hook(module, args, out):
            cos = F.cosine_similarity(args[0].double(), out.double(), dim=-1)  # (B, T)
            turn[i] += (1.0 - cos).sum().cpu()

        return hook

    handles = []
    for i, b in enumerate(blocks):
        handles.append(b.mlp.down.register_forward_pre_hook(on_down(i)))
        handles.append(b.mixer.o_proj.register_forward_pre_hook(on_o_proj(i)))
        handles.append(b.register_forward_hook(on_block(i)))
    was_training = model.training
    model.eval()
    try:
        for x in batches(calib_tokens, batch_size, model.embed.weight.device):
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    n = calib_tokens.numel()
    layers = turn / n if layer_method == "cosine" else skip_loss_increase(model, calib_tokens, batch_size)
    return Importance(torch.stack(neurons) / n, torch.stack(heads) / n, layers)


class _Skip(nn.Module):
    """A block that passes the residual stream through unchanged."""

    def forward(self, x: Tensor, ctx) -> Tensor:
        return x


@torch.no_grad()
def lm_loss(model: nn.Module, tokens: Tensor, batch_size: int) -> float:
    """Mean next-token cross-entropy (nats) of `model` over `tokens` (N, T)."""
    total, count = 0.0, 0
    for x in batches(tokens, batch_size, model.embed.weight.device):
        logits = model(x)[:, :-1].float()  # (B, T-1, V)
        total += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
        count += x[:, 1:].numel()
    return total / count


@torch.no_grad()
def skip_loss_increase(model: nn.Module, tokens: Tensor, batch_size: int = 8) -> Tensor:
    """(L,): calibration loss with block l skipped minus the full model's loss (one forward per layer)."""
    was_training = model.training
    model.eval()
    try:
        base = lm_loss(model, tokens, batch_size)
        out = torch.zeros(len(model.blocks), dtype=torch.float64)
        for i, key in enumerate(list(model.blocks)):
            block = model.blocks[key]
            model.blocks[key] = _Skip()  # swapped in place for one pass, restored below
            try:
                out[i] = lm_loss(model, tokens, batch_size) - base
            finally:
                model.blocks[key] = block
    finally:
        model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------- selection
def top_sorted(scores: Tensor, k: int) -> Tensor:
    """Indices of the k largest scores, in increasing index order (the kept units keep their order)."""
    return scores.topk(k).indices.sort().values


def select_heads(scores: Tensor, n_kv_old: int, n_heads: int, n_kv_heads: int) -> tuple[Tensor, Tensor]:
    """(query heads, KV heads) to keep in one layer from its head scores (H,): the n_kv_heads KV groups with the
    largest summed score, then the n_heads / n_kv_heads best query heads inside each kept group."""
    group = len(scores) // n_kv_old
    by_group = scores.view(n_kv_old, group)  # (K, H/K): query heads of each KV head
    kv = top_sorted(by_group.sum(1), n_kv_heads)
    per_group = n_heads // n_kv_heads
    q = torch.cat([g * group + top_sorted(by_group[g], per_group) for g in kv.tolist()])
    return q, kv


def targets(
    cfg, d_ff: int | None, n_heads: int | None, n_kv_heads: int | None, n_layers: int | None
) -> tuple[int, int, int, int]:
    """The target (d_ff, n_heads, n_kv_heads, n_layers), None filled from `cfg`, checked against it."""
    H, K, F_, L = cfg.n_heads, cfg.kv_heads, cfg.ff_dim, cfg.n_layers
    d_ff = F_ if d_ff is None else d_ff
    n_heads = H if n_heads is None else n_heads
    if n_kv_heads is None:  # multi-head attention stays multi-head; GQA keeps its KV heads
        n_kv_heads = n_heads if K == H else K
    n_layers = L if n_layers is None else n_layers
    for name, value, most in (("d_ff", d_ff, F_), ("n_heads", n_heads, H), ("n_kv_heads", n_kv_heads, K),
                              ("n_layers", n_layers, L)):  # fmt: skip
        if not isinstance(value, int) or not 1 <= value <= most:
            raise InvalidArgument(f"{name} must be an integer in [1, {most}] (the model has {most}), got {value!r}")
    if n_heads % n_kv_heads or n_heads // n_kv_heads > H // K:
        raise InvalidArgument(
            f"n_heads={n_heads} with n_kv_heads={n_kv_heads}: each kept KV head must keep the same number of query "
            f"heads, at most its {H // K}; pick n_heads a multiple of n_kv_heads (or pass n_kv_heads)"
        )
    return d_ff, n_heads, n_kv_heads, n_layers


def plan(
    model: nn.Module,
    scores: Importance,
    d_ff: int | None = None,
    n_heads: int | None = None,
    n_kv_heads: int | None = None,
    n_layers: int | None = None,
) -> dict[int, Keep]:
    """{original layer index: Keep} for the target sizes (None = keep that dimension whole)."""
    d_ff, n_heads, n_kv_heads, n_layers = targets(model.config, d_ff, n_heads, n_kv_heads, n_layers)
    keep = {}
    for i in top_sorted(scores.layers, n_layers).tolist():
        q, kv = select_heads(scores.heads[i], model.config.kv_heads, n_heads, n_kv_heads)
        keep[i] = Keep(q, kv, top_sorted(scores.neurons[i], d_ff))
    return keep


# ---------------------------------------------------------------------------------------------- the copy
def head_rows(heads: Tensor, dh: int) -> Tensor:
    """Rows of a (heads * Dh, ...) projection that belong to `heads`: h*Dh .. h*Dh + Dh - 1 for each."""
    return (heads[:, None] * dh + torch.arange(dh)).flatten()


def block_state(block: nn.Module, keep: Keep) -> dict[str, Tensor]:
    """The block's state dict with q/k/v rows and o_proj columns of the kept heads, and gate/up rows and down
    columns of the kept neurons; everything else (norms, o_proj/down biases) as it is."""
    sd = dict(block.state_dict())
    names = {m: n for n, m in block.named_modules()}
    attn, mlp = block.mixer, block.mlp

    def take(lin: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> None:
        w = lin.weight
        w = w if rows is None else w[rows.to(w.device)]
        w = w if cols is None else w[:, cols.to(w.device)]
        sd[f"{names[lin]}.weight"] = w
        if lin.bias is not None and rows is not None:
            sd[f"{names[lin]}.bias"] = lin.bias[rows.to(w.device)]

    q_rows, kv_rows = head_rows(keep.q_heads, attn.head_dim), head_rows(keep.kv_heads, attn.head_dim)
    take(attn.q_proj, rows=q_rows)
    take(attn.k_proj, rows=kv_rows)
    take(attn.v_proj, rows=kv_rows)
    take(attn.o_proj, cols=q_rows)
    for lin in (mlp.gate, mlp.up) if isinstance(mlp, GatedMLP) else (mlp.up,):
        take(lin, rows=keep.neurons)
    take(mlp.down, cols=keep.neurons)
    return sd


def check_keep(model: nn.Module, keep: dict[int, Keep]) -> tuple[int, int, int]:
    """(n_heads, n_kv_heads, d_ff) shared by every kept layer; raises where the plan fits no uniform config."""
    cfg = model.config
    if not keep:
        raise InvalidArgument("a pruned model needs at least one layer")
    sizes = {(len(k.q_heads), len(k.kv_heads), len(k.neurons)) for k in keep.values()}
    if len(sizes) != 1:
        raise InvalidArgument(f"every layer must keep the same (heads, kv heads, neurons), got {sorted(sizes)}")
    n_heads, n_kv, d_ff = sizes.pop()
    if min(n_heads, n_kv, d_ff) < 1 or n_heads % n_kv:
        raise InvalidArgument(f"cannot keep {n_heads} heads over {n_kv} KV heads and {d_ff} neurons")
    group_old, group_new = cfg.n_heads // cfg.kv_heads, n_heads // n_kv
    for i, k in keep.items():
        if not 0 <= i < cfg.n_layers:
            raise InvalidArgument(f"layer {i} is not in the model (0..{cfg.n_layers - 1})")
        kv = k.kv_heads.tolist()
        # new query head j reads new KV head j // group_new: it must be the KV head it read before
        reads = [kv.index(h // group_old) if h // group_old in kv else -1 for h in k.q_heads.tolist()]
        if reads != [j // group_new for j in range(n_heads)]:
            raise InvalidArgument(
                f"layer {i}: query heads {k.q_heads.tolist()} are not {group_new} per kept KV head {kv}, "
                "grouped in order"
            )
    return n_heads, n_kv, d_ff


@torch.no_grad()
def shrink(model: nn.Module, keep: dict[int, Keep]):
    """A new `TransformerLM` holding only the kept layers (in index order), heads and neurons of `model`,
    with the matching smaller `ModelConfig`; same vocabulary, device and dtype. `model` is not modified."""
    from scratchlm.model.transformer import TransformerLM

    check_model(model)
    n_heads, n_kv, d_ff = check_keep(model, keep)
    cfg = model.config
    layers = sorted(keep)
    pattern = "".join(cfg.layer_kind(i) for i in layers)
    new_cfg = dataclasses.replace(
        cfg,
        n_layers=len(layers),
        n_heads=n_heads,
        # multi-head stays written as 0 ("= n_heads") when it was
        n_kv_heads=0 if (not cfg.n_kv_heads and n_kv == n_heads) else n_kv,
        head_dim=cfg.dh,  # explicit: d_model // n_heads would change with n_heads
        d_ff=d_ff,
        layer_pattern=pattern[0] if len(set(pattern)) == 1 else pattern,
    )
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    for j, i in enumerate(layers):
        for name, t in block_state(model.blocks[str(i)], keep[i]).items():
            sd[f"blocks.{j}.{name}"] = t
    weight = model.embed.weight
    small = TransformerLM.from_state_dict(new_cfg, sd, device=weight.device)  # copies: no storage shared
    return small.to(weight.dtype).train(model.training)


def prune_structured(
    model: nn.Module,
    calib_tokens: Tensor,
    d_ff: int | None = None,
    n_heads: int | None = None,
    n_kv_heads: int | None = None,
    n_layers: int | None = None,
    batch_size: int = 8,
    layer_method: str = "cosine",
    scores: Importance | None = None,
):
    """A new, smaller `TransformerLM`: every layer keeps its `d_ff` most important MLP neurons and `n_heads`
    query heads (`n_kv_heads` KV heads), and the `n_layers` most important layers are kept; None keeps a
    dimension whole. Importance comes from `calib_tokens` (N, T), or from `scores` when given (to try several
    targets on one calibration pass). The result needs a recovery fine-tune (distillation from `model`)."""
    check_model(model)
    targets(model.config, d_ff, n_heads, n_kv_heads, n_layers)  # bad targets fail before the calibration pass
    if scores is None:
        scores = importance(model, calib_tokens, batch_size, layer_method)
    return shrink(model, plan(model, scores, d_ff, n_heads, n_kv_heads, n_layers))
