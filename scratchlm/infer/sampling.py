"""Per-request sampling for the batched engine: `SamplingParams`, the token history the penalties
read, and `sample()`, which turns one step's (B, V) logits into one token per running request.

    params = SamplingParams(temperature=0.8, top_p=0.95, seed=0, logprobs=5)
    gen = make_generator(params)                                # one per request, advanced only by it
    hist = TokenHistory(prompt_ids, vocab_size=V)               # only if params.needs_history
    out = sample(logits, [params], [gen], [hist])               # logits (B, V), the model's raw output
    token = out.tokens[0].item(); hist.append(token)

Each row goes through, in this order (vLLM's order for the penalties; HF's warpers for the filters):

    1. penalties    repetition (CTRL, Keskar et al. 2019, as in HF: over prompt + output tokens a logit
                    l > 0 becomes l / r, else l * r), then frequency and presence (OpenAI: over the output
                    tokens, l - frequency * count - presence * (count > 0))
    2. temperature  l / temperature; a temperature below 1e-5 (vLLM's epsilon) is greedy: argmax of the
                    penalised logits (ties: lowest id), steps 3-5 skipped (they never remove the argmax)
    3. top-k        keep the logits >= the k-th largest (ties at the k-th value all kept, as HF and vLLM)
    4. top-p        nucleus (Holtzman et al. 2020) over the softmax of what top-k kept: keep a token iff the
                    tokens ahead of it in sorted order sum to < p (the rule of `model.generate.top_p_filter`)
    5. min-p        keep tokens whose probability (after 2-4) is >= min_p * the largest probability
    6. sample       inverse CDF: one float64 uniform u from the row's generator, the first id whose
                    cumulative probability (float64) exceeds u (see `draw`)

Batch invariance (a hard requirement: RL and reproducible serving need a request's tokens and logprobs
not to depend on what else was scheduled with it) is kept by construction: every row is processed on
its own copy as a 1-D (V,) tensor, and random numbers come only from that row's generator (one uniform
per sampled step, whatever the filters kept, so a seed fixes the whole sequence). Rows with
equal settings are not grouped into one (G, V) op: CPU elementwise kernels (exp, log) take a vectorised
or a scalar path by an element's position in the flattened tensor and parallel reductions split it into
chunks by its size, so a row's last bits could depend on G. The cost is ~10 small ops per row per step
(B kernel launches each on a GPU). Measured on CPU (1 busy thread, V = 49152, per row per step): greedy
0.13 ms, temperature 0.3 ms, top-k + min-p 0.8 ms, everything + penalties + 20 logprobs ~2 ms, top-p
1.3-2.3 ms on SmolLM2-135M's logits (7 ms with a full sort of V, see `filter_top_p`). A batched kernel
that is batch-invariant by design is the way to go faster.

Logprobs: `logprobs` is the chosen token's log-probability under the raw model distribution
(log_softmax of the unmodified fp32 logits: what a training forward on the same sequence computes, and
what RL importance ratios need), `processed_logprobs` under the distribution actually sampled from
(after steps 1-5; 0 for greedy, a point mass), and with `params.logprobs = n` the top-n raw alternatives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from scratchlm.errors import InvalidArgument
from scratchlm.model.primitives import softmax

GREEDY_EPS = 1e-5  # temperatures below this are greedy (vLLM's _SAMPLING_EPS): the fp32 softmax of logits / 1e-5
# is a point mass already, and smaller divisors only add overflow
MAX_LOGPROBS = 20  # most alternatives per token (OpenAI's top_logprobs limit)
MAX_STOP = 32  # most stop strings per request
MAX_PENALTY = 2.0  # presence / frequency penalties live in [-2, 2] (OpenAI)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class SamplingParams:
    """How one request is sampled. Defaults follow vLLM / OpenAI: temperature 1.0, top_p 1.0, top_k off,
    min_p 0, no penalties (repetition 1.0, presence 0, frequency 0), seed None, max_tokens 16, no stops,
    ignore_eos False, logprobs None, n 1. Construction validates (`validate()` re-checks after edits)."""

    temperature: float = 1.0  # 0 (or below 1e-5) = greedy; 1 = the model's distribution
    top_k: int | None = None  # keep the k most probable tokens; None, 0 or -1 (vLLM's old spelling) = off
    top_p: float = 1.0  # nucleus mass in (0, 1]; 1 = off
    min_p: float = 0.0  # drop tokens below min_p * the top probability, in [0, 1]; 0 = off
    repetition_penalty: float = 1.0  # > 0, over prompt + output tokens (HF rule); 1 = off; > 1 discourages
    presence_penalty: float = 0.0  # in [-2, 2], subtracted once from each token already in the output
    frequency_penalty: float = 0.0  # in [-2, 2], subtracted per occurrence in the output
    seed: int | None = None  # the request's generator seed; None = nondeterministic
    max_tokens: int | None = 16  # most tokens to generate (>= 1); None = until the context is full
    stop_token_ids: list[int] = field(default_factory=list)  # ids that end the request (not emitted)
    stop: list[str] = field(default_factory=list)  # strings that end the request (matched by the engine)
    ignore_eos: bool = False  # keep going past the tokenizer's end-of-sequence token
    logprobs: int | None = None  # None = chosen token's logprob only; n = also the top-n alternatives (<= 20)
    n: int = 1  # samples per prompt (they share the prompt's KV blocks), >= 1

    def __post_init__(self):
        if isinstance(self.stop, str):  # OpenAI accepts one string or a list
            self.stop = [self.stop]
        self.stop = list(self.stop) if isinstance(self.stop, list | tuple) else self.stop
        if isinstance(self.stop_token_ids, list | tuple):
            self.stop_token_ids = list(self.stop_token_ids)
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    @property
    def needs_history(self) -> bool:
        """Whether `sample` needs this request's `TokenHistory` (only the penalties read it)."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def validate(self) -> SamplingParams:
        """Raise InvalidArgument naming the first field with an impossible value; return self."""

        def bad(name: str, rule: str):
            raise InvalidArgument(f"{name} must be {rule}, got {getattr(self, name)!r}")

        if not _is_real(self.temperature) or self.temperature < 0:
            bad("temperature", "a finite number >= 0 (0 = greedy)")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < -1):
            bad("top_k", "None, 0 or -1 (off) or an integer >= 1")
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            bad("top_p", "in (0, 1] (1 = off)")
        if not _is_real(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            bad("min_p", "in [0, 1] (0 = off)")
        if not _is_real(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad("repetition_penalty", "a finite number > 0 (1 = off)")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not _is_real(v) or not -MAX_PENALTY <= v <= MAX_PENALTY:
                bad(name, f"in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}] (0 = off)")
        if self.seed is not None and (not _is_int(self.seed) or not -(2**63) <= self.seed < 2**64):
            bad("seed", "None or an integer in [-2**63, 2**64)")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            bad("max_tokens", "None or an integer >= 1")
        if not isinstance(self.stop_token_ids, list) or not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "a list of token ids >= 0")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", "a string or a list of non-empty strings")
        if len(self.stop) > MAX_STOP:
            raise InvalidArgument(f"stop holds {len(self.stop)} strings; at most {MAX_STOP} are allowed")
        if not isinstance(self.ignore_eos, bool):
            bad("ignore_eos", "True or False")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS):
            bad("logprobs", f"None or an integer in [0, {MAX_LOGPROBS}]")
        if not _is_int(self.n) or self.n < 1:
            bad("n", "an integer >= 1")
        return self


def make_generator(params: SamplingParams, device: torch.device | str = "cpu", sample_index: int = 0):
    """The request's own generator, on the device of the logits it will sample from.

    Seeded from `params.seed` (nondeterministically when None). Sample `i > 0` of an `n > 1` request
    gets a seed mixed from (seed, i) with splitmix64, so its stream is unrelated to sample 0's and to
    other seeds' sample 0 (vLLM's seed + i would make request (seed=1) repeat sample 1 of seed=0).
    """
    g = torch.Generator(device=device)
    if params.seed is None:
        g.seed()
    elif sample_index == 0:
        g.manual_seed(params.seed)
    else:
        g.manual_seed(_splitmix64((params.seed % 2**64) ^ (sample_index * 0x9E3779B97F4A7C15 % 2**64)))
    return g


def _splitmix64(x: int) -> int:
    """One step of splitmix64 (Steele et al. 2014): a bijective 64-bit mixer."""
    m = 2**64 - 1
    x = (x + 0x9E3779B97F4A7C15) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


class TokenHistory:
    """What the penalties read about one request: which ids occur in prompt + output (`seen`, (V,) bool)
    and how often each id was generated (`output_counts`, (V,) float32, exact up to 2**24).

    Built once from the prompt (O(prompt)), updated in O(1) per generated token, applied in O(V) per
    step with no Python loop over tokens: 5 bytes per vocabulary entry (~250 KB at V = 49k), so the
    engine makes one only for requests with a penalty (`params.needs_history`). Samples of an `n > 1`
    request each `fork()` the prompt's history. Preemption keeps it (the output tokens are kept).
    """

    def __init__(self, prompt_ids: Sequence[int] | Tensor, vocab_size: int, device: torch.device | str = "cpu"):
        ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
        self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.seen[ids] = True
        self.output_counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)

    @classmethod
    def from_tokens(cls, prompt_ids, output_ids, vocab_size: int, device="cpu") -> TokenHistory:
        h = cls(prompt_ids, vocab_size, device)
        h.append(output_ids)
        return h

    def append(self, token_ids: int | Sequence[int] | Tensor) -> None:
        """Record generated tokens (one, or several accepted at once by speculative decoding)."""
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.seen.device).reshape(-1)
        self.seen[ids] = True
        self.output_counts.index_add_(0, ids, torch.ones(ids.shape, dtype=self.output_counts.dtype, device=ids.device))

    def fork(self) -> TokenHistory:
        h = TokenHistory.__new__(TokenHistory)
        h.seen, h.output_counts = self.seen.clone(), self.output_counts.clone()
        return h


# ---- the steps, each on one row: a 1-D (V,) float32 tensor of logits -> the same, -inf where removed


def apply_penalties(row: Tensor, params: SamplingParams, history: TokenHistory | None) -> Tensor:
    """Repetition penalty over prompt + output (HF rule), then frequency and presence over the output."""
    if not params.needs_history:
        return row
    if history is None:
        raise InvalidArgument("a request with a repetition, presence or frequency penalty needs its TokenHistory")
    r = params.repetition_penalty
    if r != 1.0:
        row = torch.where(history.seen, torch.where(row > 0, row / r, row * r), row)
    counts = history.output_counts
    if params.frequency_penalty != 0.0:
        row = row - params.frequency_penalty * counts  # separate mul and sub: no fused multiply-add
    if params.presence_penalty != 0.0:
        row = row - params.presence_penalty * (counts > 0).float()
    return row


def filter_top_k(row: Tensor, k: int | None) -> Tensor:
    """Keep the logits >= the k-th largest (all of a tie at the k-th value); k None/0/-1 or >= V = off."""
    if not k or k < 0 or k >= row.shape[-1]:
        return row
    kth = row.topk(k).values[-1]
    return row.masked_fill(row < kth, float("-inf"))


def filter_top_p(row: Tensor, p: float) -> Tensor:
    """Nucleus: keep a token iff the probability of the tokens ahead of it (sorted by probability, stable,
    so ties go to the lower id) is < p; the most probable token is always kept. p = 1 = off."""
    if p >= 1.0:
        return row
    probs = softmax(row, dim=-1)  # (V,), the softmax of model.generate.top_p_filter: the same bits
    candidates = torch.arange(row.shape[-1], device=row.device)
    if 1.0 - p >= 1e-4:
        # Only tokens of probability >= (1 - p) / 2V can be kept: from any other one down, the sorted tokens
        # weigh < V * (1 - p) / 2V, so more than p + (1 - p) / 2 lies ahead of it (a margin far above the
        # rounding of the sums). Sorting the candidates alone gives the same sorted prefix, and the same
        # sums, as sorting all V. On SmolLM2-135M's logits (V = 49k) that is ~2k-6k candidates (median,
        # p = 0.9-0.99) and 1.3-2.3 ms instead of ~7 ms on CPU.
        candidates = (probs >= (1.0 - p) / (2 * row.shape[-1])).nonzero()[:, 0]  # ids, ascending
    sorted_probs, order = probs[candidates].sort(descending=True, stable=True)
    ahead = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability mass ahead of each sorted token
    keep = torch.zeros_like(row, dtype=torch.bool)
    keep[candidates[order[ahead < p]]] = True
    return row.masked_fill(~keep, float("-inf"))


def filter_min_p(row: Tensor, min_p: float) -> Tensor:
    """Min-p (Nguyen et al. 2024): drop tokens whose probability is < min_p * the largest one. 0 = off."""
    if min_p <= 0.0:
        return row
    probs = softmax(row, dim=-1)
    return row.masked_fill(probs < min_p * probs.max(), float("-inf"))


def process_logits(row: Tensor, params: SamplingParams, history: TokenHistory | None) -> Tensor:
    """Steps 1-5 of the module docstring for a sampled (non-greedy) request: the logits sampled from."""
    row = apply_penalties(row, params, history)
    row = row / params.temperature
    row = filter_top_k(row, params.top_k)
    row = filter_top_p(row, params.top_p)
    return filter_min_p(row, params.min_p)


def draw(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One id from (V,) probabilities (need not sum to 1) by inverse CDF, with one float64 uniform from
    `generator`. On CPU at V = 49k this costs ~0.15 ms where the exponential race argmax(p / E) (what
    torch.multinomial does for one draw) costs ~1.5 ms for its V exponentials."""
    u = torch.rand((), dtype=torch.float64, generator=generator, device=probs.device)
    return invert_cdf(probs, u)


def invert_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """The id at quantile u in [0, 1): the first whose cumulative mass exceeds u * total. An id of
    probability 0 adds nothing to the cumulative sum, so it is never picked (u * total is kept below the
    total for that). The float64 sum keeps rounding (~1e-16) far below any float32 probability."""
    cdf = probs.double().cumsum(dim=-1)  # (V,)
    total = cdf[-1]
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x[None], right=True)[0]


@dataclass
class SamplerOutput:
    """One step's result for B rows (tensors on the logits' device; the engine calls .tolist() once)."""

    tokens: Tensor  # (B,) long: the chosen ids
    logprobs: Tensor  # (B,) float32: log p(token) under the raw model distribution
    processed_logprobs: Tensor  # (B,) float32: log p(token) under the distribution sampled from (0 if greedy)
    top_ids: list[Tensor | None]  # per row: (n,) long, the n most probable ids under the raw distribution
    top_logprobs: list[Tensor | None]  # per row: (n,) float32, their raw logprobs; None where logprobs is None


def sample_row(
    logits: Tensor, params: SamplingParams, generator: torch.Generator | None, history: TokenHistory | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """One request: (V,) raw logits -> (token, raw logprob, processed logprob, top ids, top logprobs)."""
    if params.greedy and params.logprobs is None and not params.needs_history:
        return _greedy_row(logits)
    # A fresh fp32 copy: the row's bits and memory layout are the same whatever batch it came from.
    row = logits.to(torch.float32, copy=True)  # (V,)
    raw_logp = torch.log_softmax(row, dim=-1)  # (V,)
    if params.greedy:
        token = apply_penalties(row, params, history).argmax()  # first maximum: ties go to the lowest id
        processed = torch.zeros((), dtype=torch.float32, device=row.device)
    else:
        if generator is None:
            raise InvalidArgument("a sampled (temperature > 0) request needs its generator (see make_generator)")
        processed_logits = process_logits(row, params, history)  # (V,), -inf where filtered
        token = draw(softmax(processed_logits, dim=-1), generator)
        processed = torch.log_softmax(processed_logits, dim=-1)[token]
    top_ids = top_logp = None
    if params.logprobs is not None:
        top_logp, top_ids = raw_logp.topk(min(params.logprobs, row.shape[-1]))
    return token, raw_logp[token], processed, top_ids, top_logp


def _greedy_row(logits: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
    """The common serving row (greedy, no penalty, no top-n): argmax, and its raw logprob without writing a
    (V,) log_softmax. At the argmax m = max, log_softmax's (l_m - max) - log sum exp(l - max) is
    -log sum exp(l - l_m): 4 passes over V instead of 6 and fewer kernels (~30% of a greedy row on CPU).
    `row - l_m` is exact (one rounding, whatever the kernel path) into a fresh tensor, so exp and sum see the
    same memory layout whatever batch the row came from: batch invariant, as the general path."""
    row = logits if logits.dtype == torch.float32 else logits.float()  # (V,)
    token = row.argmax()  # first maximum: ties go to the lowest id (exact comparisons: batch invariant)
    shifted = row - row[token]  # (V,) <= 0, fresh and contiguous
    logp = -torch.exp_(shifted).sum().log()
    return token, logp, torch.zeros((), dtype=torch.float32, device=row.device), None, None


def sample(
    logits: Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None] | None = None,
    histories: Sequence[TokenHistory | None] | None = None,
) -> SamplerOutput:
    """(B, V) raw next-token logits of B running requests -> one token each (see the module docstring).

    params, generators and histories hold one entry per row; a generator may be None for a greedy row
    and a history None for a row without penalties (the lists themselves None when no row needs them).
    Each row's result is bit-identical whatever else is in the batch.
    """
    if logits.ndim != 2:
        raise InvalidArgument(f"logits must be (B, V), got shape {tuple(logits.shape)}")
    B = logits.shape[0]
    generators = [None] * B if generators is None else generators
    histories = [None] * B if histories is None else histories
    if not len(params) == len(generators) == len(histories) == B:
        raise InvalidArgument(
            f"{B} rows of logits but {len(params)} params, {len(generators)} generators, {len(histories)} histories"
        )
    rows = [sample_row(logits[i], params[i], generators[i], histories[i]) for i in range(B)]
    if not rows:
        empty = torch.empty(0, device=logits.device)
        return SamplerOutput(empty.long(), empty, empty, [], [])
    tokens, logps, processed, top_ids, top_logps = zip(*rows)
    return SamplerOutput(
        torch.stack(tokens), torch.stack(logps), torch.stack(processed), list(top_ids), list(top_logps)
    )
