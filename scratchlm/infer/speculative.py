"""Speculative decoding of one sequence: a cheap proposer guesses up to k tokens, the target model scores
them all in one forward, and an accept/reject rule keeps the output distributed exactly as the target's
own sampling (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding"; Chen
et al. 2023, "Accelerating Large Language Model Decoding with Speculative Sampling").

    from scratchlm.infer.speculative import NGramProposer, speculative_generate
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=0)
    tokens, stats = speculative_generate(target, prompt_ids, 64, params, draft=small_model, k=4)
    tokens, stats = speculative_generate(target, prompt_ids, 64, params, draft=NGramProposer(n_max=3), k=6)
    print(stats.acceptance_rate, stats.tokens_per_forward)

One round:

    1. propose   a `DraftModel` samples x_1..x_n (n <= k) autoregressively from its own distribution q_i
                 (its logits through the same `SamplingParams` filters), with its own KV cache; the
                 `NGramProposer` (prompt lookup, no model) copies what followed the latest earlier
                 occurrence of the context's longest suffix n-gram, a deterministic guess (q_i one-hot).
    2. score     one target forward over [the context's uncached tail; x_1..x_n] gives n + 1 rows of
                 logits; row i through the engine's filters (`sampling.process_logits`: temperature,
                 top-k, top-p, min-p) is p_i, the target's distribution of the token after x_1..x_{i-1}.
                 The first round's tail is the whole prompt: prefill and verification are one forward.
    3. accept    for i = 1..n accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first
                 rejection emit a token drawn from the residual norm(max(0, p_i - q_i)) and end the round;
                 if all n are accepted, emit a bonus token drawn from p_{n+1}. Every round emits 1..n+1
                 tokens for one target forward.
    4. roll back both caches forget the rejected proposals (`rollback`).

Why the output follows p exactly (Leviathan et al. 2023, appendix A.1): a token y comes out of step 3
either as an accepted proposal, with probability q(y) min(1, p(y)/q(y)) = min(p(y), q(y)), or from the
residual after a rejection, with probability (1 - sum_x min(p(x), q(x))) * max(0, p(y) - q(y)) / Z where
Z = sum_x max(0, p(x) - q(x)) = 1 - sum_x min(p(x), q(x)); the sum is min(p, q)(y) + max(0, p(y) - q(y))
= p(y). By induction over i, each emitted token follows p given the tokens before it.
Greedy (temperature below `sampling.GREEDY_EPS`): accept x_i while it equals the argmax of row i; the
first mismatch emits the target's argmax, so the output is the target's greedy output token for token.

Caches: the target's cache holds the context minus its last token (whose logits give the next p), the
draft's whatever it last fed that is still a prefix of the context. The model's `KVCache` only appends,
so `rollback` here truncates the slot counts and marks the forgotten slots empty (position -1): softmax
attention with full context (or a sliding-window ring large enough never to wrap) and MLA latents can be
rolled back; a recurrent state (linear attention, S4D) or a wrapped ring cannot forget a token and is
refused with an error naming the layer (supporting them needs a state snapshot per proposed token).

Random numbers all come from the request's generator (`sampling.make_generator(params)`): the draft's
draws, one uniform per verified proposal, one draw for the emitted token. A seed fixes the output; it is
not the engine's output for that seed (the stream is used differently), only the same distribution.

Refused: repetition / presence / frequency penalties (p_i would depend on the tokens accepted before it
within the round: possible with a history per row, not done), stop strings (matching them needs the
detokenizer: the engine's job), n > 1. Stop token ids end the sequence and are not emitted, as in the
engine. `logprobs` is not computed.

The batched engine runs the same rule per request inside its own steps: `spec_decode.py`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from scratchlm.errors import InvalidArgument
from scratchlm.infer.sampling import SamplingParams, draw, make_generator, process_logits
from scratchlm.model.cache import KVCache, ModelCache
from scratchlm.model.mla import LatentCache
from scratchlm.model.primitives import softmax

# ---- cache rollback


def check_rollback(cache: ModelCache) -> None:
    """Raise InvalidArgument unless every layer of `cache` can forget its last tokens (see `rollback`)."""
    for i, layer in enumerate(cache.layers):
        if isinstance(layer, LatentCache):
            continue
        if isinstance(layer, KVCache):
            if layer.window is None or layer.size >= cache.max_len:
                continue  # full context, or a ring that the cache's max_len never lets wrap
            raise InvalidArgument(
                f"layer {i} is sliding-window attention whose ring of {layer.size} slots would wrap before"
                f" max_len {cache.max_len}: overwritten keys cannot be brought back, so speculative decoding"
                " cannot roll it back (use a max_len <= the window or a model without sliding-window layers)"
            )
        raise InvalidArgument(
            f"layer {i} keeps a {type(layer).__name__}, a recurrent state that cannot forget tokens: speculative"
            " decoding needs every layer to cache per-token keys (softmax attention or MLA)"
        )


def rollback(cache: ModelCache, length: int) -> None:
    """Forget every cached slot from `length` on, so the next forward continues after slot `length - 1`:
    the cache then answers as a fresh prefill of its first `length` slots does. The forgotten keys stay
    in memory, marked empty (position -1, never attended to), and the next tokens overwrite them."""
    check_rollback(cache)
    if not 0 <= length <= cache.length:
        raise InvalidArgument(f"cannot roll a cache of {cache.length} slots back to {length}")
    for layer in cache.layers:
        layer.length = length
        layer.pos[:, length:] = -1
    cache.length = length
    # Each row goes on after its last real token: one past the position stored in slot length - 1
    # (-1 + 1 = 0 for a row that holds only left padding so far, as after a prefill of padding).
    pos = cache.layers[0].pos  # (B, S)
    cache.next_pos = pos[:, length - 1] + 1 if length > 0 else torch.zeros_like(cache.next_pos)


# ---- the accept / reject rule, on one sequence's n + 1 verification rows


def processed_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """(V,) raw logits -> the (V,) probabilities the engine samples from (`sampling.process_logits`),
    in float32 or better (float64 logits stay float64)."""
    row = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True)
    return softmax(process_logits(row, params, None), dim=-1)


def accept_probability(p_x: Tensor, q_x: Tensor) -> Tensor:
    """min(1, p(x) / q(x)): the probability of keeping a proposal x drawn from q (q(x) > 0)."""
    return torch.clamp(p_x / q_x, max=1.0)


def residual(p: Tensor, q: Tensor) -> Tensor:
    """norm(max(0, p - q)) (V,): what to draw from after a rejection. It sums to 0 only when p <= q
    everywhere, i.e. p == q up to rounding, where a rejection has probability 0 (rounding aside): p then."""
    r = torch.clamp(p - q, min=0.0)
    total = r.sum()
    return r / total if total > 0 else p


def verify(p: Tensor, proposals: Sequence[int], q: Tensor | None, generator: torch.Generator) -> tuple[int, int]:
    """Sampled verification. p (n+1, V): the target's processed probabilities after each proposal prefix;
    q (n, V): the proposer's, or None for deterministic proposals (q_i one-hot at x_i). Returns
    (number of proposals accepted, the token emitted after them: a residual or a bonus draw)."""
    p = p.double()
    for i, x in enumerate(proposals):
        if q is None:
            q_i = torch.zeros_like(p[i])
            q_i[x] = 1.0
        else:
            q_i = q[i].to(p)
        if not q_i[x] > 0:
            raise InvalidArgument(f"proposal {i} (token {x}) has probability 0 under its own proposer's q")
        u = torch.rand((), dtype=torch.float64, generator=generator, device=p.device)
        if u < accept_probability(p[i, x], q_i[x]):
            continue
        return i, int(draw(residual(p[i], q_i), generator))
    return len(proposals), int(draw(p[len(proposals)], generator))


def verify_greedy(logits: Tensor, proposals: Sequence[int]) -> tuple[int, int]:
    """Greedy verification over (n+1, V) raw logits: accept while a proposal is the row's argmax (ties:
    lowest id, as the engine's greedy sampler); emit the argmax of the first row that disagrees."""
    best = logits.argmax(dim=-1).tolist()  # (n+1,)
    for i, x in enumerate(proposals):
        if x != best[i]:
            return i, best[i]
    return len(proposals), best[len(proposals)]


# ---- proposers: `start(prompt, max_len, params, generator)` gives a per-sequence session whose
# `propose(context, n)` returns (up to n token ids, q (n, V) or None for deterministic proposals)


class NGramProposer:
    """Prompt lookup (Saxena 2023; vLLM's `ngram`, HF's `prompt_lookup_num_tokens`): find the longest
    suffix of the context, n_max tokens down to n_min, that occurred earlier in it, and propose the tokens
    that followed its most recent earlier occurrence. No model, no cost worth counting; it pays off when
    the output copies the input (summaries, code edits, retrieval answers)."""

    def __init__(self, n_max: int = 3, n_min: int = 1):
        if not (isinstance(n_min, int) and isinstance(n_max, int) and 1 <= n_min <= n_max):
            raise InvalidArgument(f"NGramProposer needs integers 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
        self.n_max, self.n_min = n_max, n_min
        self.draft_forwards = 0

    def start(self, prompt: Sequence[int], max_len: int, params: SamplingParams, generator) -> NGramProposer:
        return self  # stateless: the context is all it reads

    def propose(self, context: Sequence[int], n: int) -> tuple[list[int], None]:
        return prompt_lookup(context, n, self.n_max, self.n_min), None


def prompt_lookup(context: Sequence[int], k: int, n_max: int, n_min: int) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the context's longest suffix
    n-gram (n from n_max down to n_min); [] when none occurs earlier. O(len(context) * n_max)."""
    L = len(context)
    for n in range(min(n_max, L - 1), n_min - 1, -1):
        suffix = list(context[L - n :])
        for j in range(L - n - 1, -1, -1):  # starts of earlier occurrences, latest first, each followed by a token
            if context[j + n - 1] == suffix[-1] and list(context[j : j + n]) == suffix:
                return list(context[j + n : j + n + k])
    return []


class DraftModel:
    """A small model of the same vocabulary that samples the proposals from its own processed
    distribution q (its logits through the request's `SamplingParams`), keeping its own KV cache."""

    def __init__(self, model):
        self.model = model

    def start(self, prompt: Sequence[int], max_len: int, params: SamplingParams, generator) -> _DraftSession:
        return _DraftSession(self.model, max_len, params, generator)


class _DraftSession:
    def __init__(self, model, max_len: int, params: SamplingParams, generator):
        self.model, self.params, self.generator = model, params, generator
        self.cache = model.new_cache(1, max_len)
        check_rollback(self.cache)
        self.tokens: list[int] = []  # the ids in self.cache, in order
        self.synced = 0  # self.tokens[: self.synced] is known to be a prefix of every later context
        self.device = next(model.parameters()).device
        self.draft_forwards = 0

    def _last_logits(self, ids: list[int]) -> Tensor:
        logits = self.model(torch.tensor([ids], device=self.device), cache=self.cache)  # (1, T, V)
        self.tokens.extend(ids)
        self.draft_forwards += 1
        return logits[0, -1]  # (V,)

    def propose(self, context: Sequence[int], n: int) -> tuple[list[int], Tensor | None]:
        # Keep what the cache holds of the context (up to the accepted proposals), never its last token:
        # feeding at least one token gives the logits of the first proposal.
        keep = min(self.synced, len(context) - 1)
        limit = min(len(self.tokens), len(context) - 1)
        while keep < limit and self.tokens[keep] == context[keep]:
            keep += 1
        rollback(self.cache, keep)
        del self.tokens[keep:]
        self.synced = len(context)
        feed, proposals, qs = list(context[keep:]), [], []
        for _ in range(n):
            logits = self._last_logits(feed)
            if self.params.greedy:
                x = int(logits.argmax())
            else:
                q = processed_probs(logits, self.params)  # (V,)
                x = int(draw(q, self.generator))
                qs.append(q)
            proposals.append(x)
            feed = [x]  # the last proposal is fed next round, if it is accepted
        return proposals, (torch.stack(qs) if qs else None)


# ---- the loop


@dataclass
class SpecStats:
    """What one `speculative_generate` call did."""

    proposed: int = 0  # proposals the target verified
    accepted: int = 0  # of them, accepted
    target_forwards: int = 0  # one per round (the first one also prefills the prompt)
    draft_forwards: int = 0  # draft model forwards (0 for prompt lookup)
    new_tokens: int = 0  # tokens emitted
    finish_reason: str = "length"  # "stop": a stop token id (not emitted); "length": max_new_tokens

    @property
    def acceptance_rate(self) -> float:
        """accepted / proposed; 0.0 when nothing was proposed."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """Emitted tokens per target forward: 1 for plain decoding, up to k + 1 here."""
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_forward": self.tokens_per_forward,
        }


def _check_params(params: SamplingParams, k: int) -> None:
    if not isinstance(params, SamplingParams):
        raise InvalidArgument(f"params must be a SamplingParams, got {type(params).__name__}")
    params.validate()
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidArgument(f"k (proposals per round) must be an integer >= 1, got {k!r}")
    if params.needs_history:
        raise InvalidArgument(
            "speculative decoding does not support repetition, presence or frequency penalties (the target's"
            " distribution would change with every accepted token inside a round); set them to their defaults"
        )
    if params.stop:
        raise InvalidArgument("speculative decoding matches stop token ids only; stop strings are the engine's job")
    if params.n != 1:
        raise InvalidArgument(f"speculative decoding generates one sequence (n = 1), got n = {params.n}")


def _check_model_length(model, name: str, max_len: int) -> None:
    cfg = model.config
    if cfg.positions in ("learned", "sinusoidal") and max_len > cfg.context_length:
        raise InvalidArgument(
            f"prompt + max_new_tokens = {max_len} tokens > the {name}'s context_length {cfg.context_length}"
            f" ({cfg.positions} positions end there)"
        )


@torch.no_grad()
def speculative_generate(
    target,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    params: SamplingParams,
    draft=None,
    k: int = 4,
    max_len: int | None = None,
) -> tuple[list[int], SpecStats]:
    """Continue one prompt by up to `max_new_tokens` tokens, distributed as the target's own sampling
    with `params` (greedy: identical to it); returns (the new tokens, `SpecStats`).

    draft: a TransformerLM of the target's vocabulary (wrapped in `DraftModel`), a proposer (`DraftModel`,
        `NGramProposer`, or anything with `start(prompt, max_len, params, generator)` returning a session
        with `propose(context, n) -> (ids, q (n, V) or None)`), or None for `NGramProposer()`.
    k: proposals per round (fewer near max_new_tokens: a round never proposes past it).
    max_len: longest prompt + new tokens, default the target's context_length (RoPE/NoPE models may go
        beyond it, as in `generate`).
    Stop tokens (`params.stop_token_ids`) end the sequence and are not returned. Models run in eval mode
    and get their train/eval mode back.
    """
    _check_params(params, k)
    proposer = NGramProposer() if draft is None else DraftModel(draft) if isinstance(draft, torch.nn.Module) else draft
    if not callable(getattr(proposer, "start", None)):
        raise InvalidArgument(f"draft must be a TransformerLM, a proposer or None, got {type(draft).__name__}")
    if isinstance(proposer, DraftModel):
        d = proposer.model
        if d.config.vocab_size != target.config.vocab_size:
            raise InvalidArgument(
                f"the draft's vocabulary ({d.config.vocab_size} ids) differs from the target's"
                f" ({target.config.vocab_size}): the draft must use the target's tokenizer"
            )
        if next(d.parameters()).device != next(target.parameters()).device:
            raise InvalidArgument("the draft and the target must be on the same device")
    V = target.config.vocab_size
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise InvalidArgument("the prompt must hold at least one token")
    if not all(0 <= t < V for t in prompt):
        raise InvalidArgument(f"prompt ids must be in [0, {V})")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InvalidArgument(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    max_len = max_len or target.config.context_length
    if len(prompt) + max_new_tokens > max_len:
        raise InvalidArgument(
            f"prompt of {len(prompt)} tokens + max_new_tokens={max_new_tokens} > max_len={max_len}"
            " (shorten the prompt or generate fewer tokens)"
        )
    _check_model_length(target, "target", max_len)
    if isinstance(proposer, DraftModel):
        _check_model_length(proposer.model, "draft", max_len)
    stats = SpecStats()
    if max_new_tokens == 0:
        return [], stats

    models = [target] + ([proposer.model] if isinstance(proposer, DraftModel) else [])
    modes = [m.training for m in models]
    for m in models:
        if m.training:  # (eval() walks every module: skipped when there is nothing to change)
            m.eval()
    try:
        device = next(target.parameters()).device
        cache = target.new_cache(1, max_len)
        check_rollback(cache)
        generator = make_generator(params, device)
        session = proposer.start(prompt, max_len, params, generator)
        return _rounds(target, cache, session, prompt, max_new_tokens, params, k, generator, stats), stats
    finally:
        for m, mode in zip(models, modes):
            if mode:
                m.train()


def _rounds(target, cache, session, prompt, max_new_tokens, params, k, generator, stats) -> list[int]:
    device = next(target.parameters()).device
    V = target.config.vocab_size
    stops = set(params.stop_token_ids)
    context, out = list(prompt), []
    while len(out) < max_new_tokens:
        n = min(k, max_new_tokens - len(out) - 1)  # a round emits up to n + 1 tokens
        proposals, q = session.propose(context, n) if n > 0 else ([], None)
        proposals = [int(x) for x in proposals]
        if len(proposals) > n or not all(0 <= x < V for x in proposals):
            raise InvalidArgument(f"the proposer returned {proposals}: at most {n} ids in [0, {V}) were asked for")
        if q is not None and q.shape != (len(proposals), V):
            raise InvalidArgument(f"the proposer's q has shape {tuple(q.shape)}, expected ({len(proposals)}, {V})")
        # The cache holds the context minus its last token: feed the rest, then the proposals.
        feed = context[cache.length :] + proposals
        logits = target(torch.tensor([feed], device=device), cache=cache)[0, -(len(proposals) + 1) :]  # (n+1, V)
        stats.target_forwards += 1
        if params.greedy:
            m, token = verify_greedy(logits, proposals)
        else:
            p = torch.stack([processed_probs(row, params) for row in logits])  # (n+1, V)
            m, token = verify(p, proposals, q, generator)
        stats.proposed += len(proposals)
        stats.accepted += m
        rollback(cache, len(context) + m)  # keep the context and the accepted proposals
        for t in proposals[:m] + [token]:
            if t in stops:
                stats.finish_reason = "stop"
                break
            out.append(t)
            context.append(t)
        if stats.finish_reason == "stop":
            break
    stats.new_tokens = len(out)
    stats.draft_forwards = getattr(session, "draft_forwards", 0)
    return out


# ---- measurement (for benchmarks; tests do not assert timings)


def measure(
    target,
    draft_or_proposer,
    prompts: Sequence[Sequence[int]],
    ks: Sequence[int] = (2, 4, 6, 8),
    max_new_tokens: int = 32,
    params: SamplingParams | None = None,
    repeats: int = 1,
) -> list[dict]:
    """Acceptance rate and wall-clock speedup over plain `generate` (KV cache, one token per forward) on
    `prompts`, for each k. Greedy by default; stop tokens are dropped so both paths generate
    max_new_tokens per prompt. Each timing is the best of `repeats` passes over the prompts (after one
    warm-up call), which filters out a busy machine's stalls. Returns one dict per k: k, acceptance_rate,
    tokens_per_forward, seconds, baseline_seconds, speedup and, for greedy, identical (outputs equal the
    plain ones)."""
    from scratchlm.model.generate import generate

    params = dataclasses.replace(params or SamplingParams(temperature=0.0), stop_token_ids=[], max_tokens=None)
    top_k = params.top_k if params.top_k and params.top_k > 0 else None
    top_p = params.top_p if params.top_p < 1.0 else None

    def plain(prompt):
        return generate(
            target, list(prompt), max_new_tokens, temperature=params.temperature, top_k=top_k, top_p=top_p, seed=0
        )[len(prompt) :]

    def spec(prompt, k):
        return speculative_generate(target, prompt, max_new_tokens, params, draft=draft_or_proposer, k=k)

    def best_of(run):
        run(prompts[0])  # warm-up (first-call allocations)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            results = [run(p) for p in prompts]
            best = min(best, time.perf_counter() - t0)
        return results, best

    reference, baseline = best_of(plain)
    rows = []
    for k in ks:
        runs, seconds = best_of(lambda p, k=k: spec(p, k))
        proposed = sum(s.proposed for _, s in runs)
        row = {
            "k": k,
            "acceptance_rate": sum(s.accepted for _, s in runs) / proposed if proposed else 0.0,
            "tokens_per_forward": sum(s.new_tokens for _, s in runs) / sum(s.target_forwards for _, s in runs),
            "seconds": seconds,
            "baseline_seconds": baseline,
            "speedup": baseline / seconds,
        }
        if params.greedy:
            row["identical"] = all(toks == ref for (toks, _), ref in zip(runs, reference))
        rows.append(row)
    return rows
