"""Autoregressive sampling from a TransformerLM: greedy, temperature, top-k, top-p (nucleus).

    from scratchlm.model.generate import generate
    ids = generate(model, [1, 2, 3], max_new_tokens=50, temperature=0.8, top_p=0.95, seed=0)

With `use_cache=True` the prompt is prefilled once into `model.new_cache(...)` (KV caches, MLA
latents, linear-attention and SSM states) and every new token costs one single-token forward;
`use_cache=False` recomputes the whole prefix at every step and is the reference the cached path
is tested against.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from scratchlm.errors import InvalidArgument
from scratchlm.model.primitives import softmax


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of the last dim (exactly k, ties broken by torch.topk), -inf elsewhere."""
    k = min(k, logits.shape[-1])
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most probable tokens whose
    total probability is >= p, -inf elsewhere. A token is kept iff the tokens strictly more probable
    than it (in sorted order) sum to < p, so the most probable token is always kept."""
    probs, order = softmax(logits.float(), dim=-1).sort(dim=-1, descending=True)
    before = probs.cumsum(dim=-1) - probs  # probability mass ahead of each sorted token
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, before < p)
    return logits.masked_fill(~keep, float("-inf"))


def sample_next(
    logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator
) -> Tensor:
    """(B, V) logits -> (B,) token ids. temperature 0 = argmax; else scale by 1/temperature, then
    top-k, then top-p, then draw from the softmax with `generator`."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


def _check_args(model, T: int, max_new_tokens: int, temperature, top_k, top_p, max_len: int | None) -> None:
    cfg = model.config
    if T < 1:
        raise InvalidArgument("the prompt must hold at least one token")
    if max_new_tokens < 0:
        raise InvalidArgument(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise InvalidArgument(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise InvalidArgument(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InvalidArgument(f"top_p must be in (0, 1], got {top_p}")
    max_len = max_len or cfg.context_length
    if cfg.positions in ("learned", "sinusoidal") and max_len > cfg.context_length:
        raise InvalidArgument(
            f"max_len={max_len} > context_length={cfg.context_length}: a model with {cfg.positions} "
            "positions has no position beyond its context"
        )
    if T + max_new_tokens > max_len:
        raise InvalidArgument(
            f"prompt of {T} tokens + max_new_tokens={max_new_tokens} = {T + max_new_tokens} > max_len={max_len}"
            " (shorten the prompt or generate fewer tokens; RoPE/NoPE models accept a larger max_len)"
        )


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Prompts of any lengths -> (ids (B, T), positions (B, T)), right-aligned: row b starts with
    T - len(prompts[b]) padding tokens (id `pad_id`, position -1), then its tokens at positions 0, 1, ..."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    positions = torch.full((len(prompts), T), -1, dtype=torch.long)
    for b, p in enumerate(prompts):
        if p:
            ids[b, T - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            positions[b, T - len(p) :] = torch.arange(len(p))
    return ids, positions


@torch.no_grad()
def generate(
    model,
    prompt_ids: Sequence[int] | Sequence[Sequence[int]] | Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    seed: int | None = None,
    use_cache: bool = True,
    max_len: int | None = None,
) -> list[int] | list[list[int]] | Tensor:
    """Continue `prompt_ids` by up to `max_new_tokens` tokens.

    prompt_ids: a list of ints (one sequence); a list of lists of ints (a batch of prompts of any
        lengths: they are left-padded, and each row gives, token for token, what it gives alone); or
        a (B, T) integer tensor (B sequences of the same length T >= 1; no padding).
    Returns: for a list, a list: the prompt followed by the new tokens; for a list of lists, one
        such list per prompt, ending at its stop token if it produced one; for a tensor, a (B, T + n)
        tensor on the model's device, the prompts followed by n <= max_new_tokens new tokens.
    temperature: 0 = greedy (argmax; top_k, top_p and seed are then unused); > 0 divides the logits.
    top_k, top_p: applied in that order after the temperature; None = off.
    stop_tokens: generation of a sequence ends when it produces one of them; the stop token is
        included in the output. In a batch, a finished row repeats its stop token while the others
        continue, and generation ends when every row has finished (so n < max_new_tokens is possible).
    seed: seeds the torch.Generator used for sampling, so equal seeds give equal samples; None
        draws a fresh seed. (Sampled rows of a batch draw from one generator: equal to unbatched
        sampling only for greedy decoding.)
    use_cache: True = prefill the prompt into `model.new_cache` and feed one token per step;
        False = recompute the whole prefix at every step (slower, the reference).
    max_len: longest prompt + new tokens, default `context_length`. Models with learned or
        sinusoidal positions cannot exceed context_length; RoPE and NoPE models may. A prompt with
        T + max_new_tokens > max_len raises ValueError before any compute.
    The model runs in eval mode (no dropout) and gets its train/eval mode back afterwards.
    """
    as_list = not isinstance(prompt_ids, Tensor)
    ragged = as_list and len(prompt_ids) > 0 and not isinstance(prompt_ids[0], int)
    device = next(model.parameters()).device
    positions = None
    if ragged:
        if any(len(p) < 1 for p in prompt_ids):
            raise InvalidArgument("every prompt must hold at least one token")
        ids, positions = left_pad(prompt_ids)
        positions = positions.to(device)
    else:
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long) if as_list else prompt_ids
    if ids.dim() != 2:
        raise InvalidArgument(f"prompt_ids must be a list of ints or a (B, T) tensor, got shape {tuple(ids.shape)}")
    ids = ids.to(device=device, dtype=torch.long)
    B, T = ids.shape
    _check_args(model, T, max_new_tokens, temperature, top_k, top_p, max_len)
    steps = _decode(model, ids, positions, max_new_tokens, temperature, top_k, top_p, stop_tokens, seed, use_cache)
    out = torch.cat([ids, *(nxt[:, None] for nxt in steps)], dim=1)  # (B, T + n)
    if ragged:
        return [_trim(out[b, T - len(p) :].tolist(), len(p), set(stop_tokens)) for b, p in enumerate(prompt_ids)]
    return out[0].tolist() if as_list else out


def _decode(model, ids, positions, max_new_tokens, temperature, top_k, top_p, stop_tokens, seed, use_cache):
    """Yield the (B,) next tokens, step by step, with the model in eval mode and no autograd."""
    device = ids.device
    B, T = ids.shape
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    fill = torch.zeros(B, dtype=torch.long, device=device)  # the stop token each finished row repeats

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            cache = model.new_cache(B, T + max_new_tokens) if use_cache else None
            out = ids
            logits = model(ids, cache=cache, positions=positions)  # (B, T, V)
        for step in range(max_new_tokens):
            with torch.no_grad():
                nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)  # (B,)
                nxt = torch.where(finished, fill, nxt)
                newly = ~finished & torch.isin(nxt, stops)
                fill = torch.where(newly, nxt, fill)
                finished |= newly
            yield nxt
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            with torch.no_grad():
                if use_cache:
                    logits = model(nxt[:, None], cache=cache)  # each row continues at its own next position
                else:
                    out = torch.cat([out, nxt[:, None]], dim=1)
                    if positions is not None:
                        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
                    logits = model(out, positions=positions)
    finally:
        model.train(was_training)


def stream(
    model,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    seed: int | None = None,
    max_len: int | None = None,
) -> Iterator[int]:
    """The new tokens of one prompt as they are sampled (the same tokens as `generate`, which this
    shares its loop with), ending after a stop token (included) or `max_new_tokens`."""
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=next(model.parameters()).device)
    if ids.shape[1] < 1:
        raise InvalidArgument("the prompt must hold at least one token")
    _check_args(model, ids.shape[1], max_new_tokens, temperature, top_k, top_p, max_len)
    for nxt in _decode(model, ids, None, max_new_tokens, temperature, top_k, top_p, stop_tokens, seed, True):
        yield int(nxt[0])


def _trim(row: list[int], prompt_len: int, stops: set[int]) -> list[int]:
    """A row's prompt and new tokens, up to and including its first stop token."""
    for i in range(prompt_len, len(row)):
        if row[i] in stops:
            return row[: i + 1]
    return row
