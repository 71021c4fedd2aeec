"""Speculative decoding against the target alone: greedy output equals `generate()` (a different draft,
the target as its own draft, prompt lookup); the accept/reject rule emits exactly p (analytically, and by
chi-square over many seeded draws); the sampled first two tokens follow the target's processed
distribution whatever the proposer (chi-square over seeded runs on a 5-token vocabulary); cache rollback
equals a fresh prefill; bad input is refused with a clear error."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from scratchlm.errors import InvalidArgument
from scratchlm.infer.sampling import SamplingParams, make_generator
from scratchlm.infer.speculative import (
    DraftModel,
    NGramProposer,
    accept_probability,
    check_rollback,
    measure,
    processed_probs,
    prompt_lookup,
    residual,
    rollback,
    speculative_generate,
    verify,
    verify_greedy,
)
from scratchlm.kernels import use_backend
from scratchlm.model import MLAConfig, ModelConfig, TransformerLM
from scratchlm.model.generate import generate

V = 64
PROMPT = [3, 17, 42, 5, 9]
GREEDY = SamplingParams(temperature=0.0)
HAS_SSM = importlib.util.find_spec("scratchlm.model.ssm") is not None

# Mixers whose caches roll back; the window (40) is >= every max_len used, so its ring never wraps.
VARIANTS = {
    "mha": {},
    "gqa": {"n_kv_heads": 2},
    "mla": {"attention": "mla", "mla": MLAConfig(kv_lora_rank=12, q_lora_rank=10, rope_head_dim=4)},
    "sliding_window": {"layer_pattern": "SL", "window": 40, "n_kv_heads": 2},
    "learned_positions": {"positions": "learned"},
}


def tiny(seed: int = 0, vocab: int = V, **kw) -> TransformerLM:
    """float64 so that a multi-token verification forward and one-token decodes agree far below any argmax
    gap; a large init and an untied head so the greedy continuation varies."""
    torch.manual_seed(seed)
    base = dict(
        vocab_size=vocab, context_length=40, d_model=32, n_layers=2, n_heads=4, init_std=0.3, tie_embeddings=False
    )
    return TransformerLM(ModelConfig(**(base | kw))).eval().double()


def reference(model, prompt, n):
    return generate(model, prompt, n, temperature=0.0)[len(prompt) :]


# ---- greedy: identical to the target's own greedy output


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_with_a_different_draft_equals_generate(name, k):
    target = tiny(0, **VARIANTS[name])
    draft = tiny(1, d_model=16, n_layers=1)  # another architecture, another random init
    tokens, stats = speculative_generate(target, PROMPT, 30, GREEDY, draft=draft, k=k)
    assert tokens == reference(target, PROMPT, 30)
    assert stats.new_tokens == 30 and stats.finish_reason == "length"
    assert stats.accepted <= stats.proposed and stats.draft_forwards >= stats.proposed
    # each round emits the accepted proposals plus one token
    assert stats.new_tokens == stats.accepted + stats.target_forwards


@pytest.mark.parametrize("name", ["mha", "mla", "sliding_window"])
def test_the_target_as_its_own_draft_accepts_everything(name):
    target = tiny(0, **VARIANTS[name])
    tokens, stats = speculative_generate(target, PROMPT, 30, GREEDY, draft=target, k=4)
    assert tokens == reference(target, PROMPT, 30)
    assert stats.acceptance_rate == 1.0
    assert stats.target_forwards == 6 and stats.tokens_per_forward == 5.0  # 30 tokens in rounds of 4 + 1


def test_prompt_lookup_greedy_equals_generate_and_accepts_on_a_repetitive_prompt():
    target = tiny(0)
    prompt = [7, 8, 9, 10, 11, 12] * 3
    ref = reference(target, prompt, 20)
    for k in (1, 4):
        tokens, stats = speculative_generate(target, prompt, 20, GREEDY, draft=NGramProposer(n_max=3, n_min=1), k=k)
        assert tokens == ref
        assert stats.accepted > 0 and stats.draft_forwards == 0
        assert stats.new_tokens == stats.accepted + stats.target_forwards
    assert speculative_generate(target, prompt, 20, GREEDY, k=4)[0] == ref  # draft=None: prompt lookup


def test_stop_tokens_end_the_sequence_and_are_not_emitted():
    target = tiny(0)
    ref = reference(target, PROMPT, 30)
    stop = ref[11]
    first = ref.index(stop)
    params = SamplingParams(temperature=0.0, stop_token_ids=[stop, V - 1 if stop != V - 1 else 0])
    for draft in (target, tiny(1), NGramProposer()):
        tokens, stats = speculative_generate(target, PROMPT, 30, params, draft=draft, k=4)
        assert tokens == ref[:first] and stats.finish_reason == "stop" and stats.new_tokens == first


def test_lengths_modes_and_seeds():
    target, draft = tiny(0), tiny(1)
    assert speculative_generate(target, PROMPT, 0, GREEDY, draft=draft)[0] == []
    assert speculative_generate(target, PROMPT, 1, GREEDY, draft=draft)[0] == reference(target, PROMPT, 1)
    full = 40 - len(PROMPT)  # up to the context length: the learned-positions model has no position beyond
    learned = tiny(0, positions="learned")
    assert speculative_generate(learned, PROMPT, full, GREEDY, draft=draft, k=8)[0] == reference(learned, PROMPT, full)
    target.train()
    draft.train()
    sampled = SamplingParams(temperature=1.0, top_p=0.9, seed=5)
    a = speculative_generate(target, PROMPT, 20, sampled, draft=draft, k=3)
    assert target.training and draft.training  # modes given back
    b = speculative_generate(target, PROMPT, 20, sampled, draft=draft, k=3)
    c = speculative_generate(target, PROMPT, 20, SamplingParams(temperature=1.0, top_p=0.9, seed=6), draft=draft, k=3)
    assert a[0] == b[0] and a[0] != c[0]  # a seed fixes the output


# ---- n-gram lookup


def test_prompt_lookup_finds_the_longest_suffix_at_its_latest_occurrence():
    ctx = [1, 2, 3, 9, 9, 2, 3, 4, 5, 1, 2, 3]
    assert prompt_lookup(ctx, 3, n_max=3, n_min=1) == [9, 9, 2]  # [1, 2, 3] at 0 (the 2-gram [2, 3] is later)
    assert prompt_lookup(ctx, 3, n_max=2, n_min=1) == [4, 5, 1]  # [2, 3]: its latest occurrence, at 5
    assert prompt_lookup(ctx, 1, n_max=2, n_min=1) == [4]
    assert prompt_lookup([5, 6, 7, 8], 3, n_max=3, n_min=1) == []  # no earlier occurrence
    assert prompt_lookup([5, 6, 5, 7, 6], 2, n_max=3, n_min=2) == []  # only a 1-gram matches, n_min = 2
    assert prompt_lookup([5, 6, 5, 7, 6], 2, n_max=3, n_min=1) == [5, 7]
    assert prompt_lookup([4, 4, 4, 4], 5, n_max=2, n_min=1) == [4]  # overlapping: [4, 4] at 1, one token after
    assert prompt_lookup([1, 2, 1], 4, n_max=3, n_min=1) == [2, 1]  # the continuation may run into the suffix
    assert prompt_lookup([3], 2, n_max=3, n_min=1) == []


# ---- the accept / reject rule


def random_dists(seed: int, V: int = 7):
    """Pairs (p, q) of distributions with zeros in different places, equal ones, disjoint ones."""
    g = torch.Generator().manual_seed(seed)

    def dist(zero_mask):
        x = torch.rand(V, generator=g, dtype=torch.float64) ** 3
        if zero_mask is not None:
            x[zero_mask] = 0
        return x / x.sum()

    p = dist(torch.arange(V) % 3 == 0)
    q = dist(torch.arange(V) % 2 == 0)
    disjoint = dist(torch.arange(V) >= V // 2), dist(torch.arange(V) < V // 2)
    one_hot = torch.zeros(V, dtype=torch.float64)
    one_hot[1] = 1.0
    return [(p, q), (q, p), (p, p.clone()), disjoint, (p, one_hot), (one_hot, q), (dist(None), dist(None))]


@pytest.mark.parametrize("seed", [0, 1])
def test_accept_rule_emits_exactly_p(seed):
    """P(emit y) = q(y) * accept(y) + P(reject) * residual(y), from the module's own pieces, equals p(y)."""
    for p, q in random_dists(seed):
        live = q > 0  # a proposer only proposes tokens it gives probability > 0
        accept = torch.zeros_like(p)
        accept[live] = accept_probability(p[live], q[live])
        p_reject = 1.0 - (q * accept).sum()
        emitted = q * accept + p_reject * residual(p, q)
        torch.testing.assert_close(emitted, p, rtol=0, atol=1e-12)
        assert (accept <= 1).all() and (accept >= 0).all()


def test_verify_first_token_follows_p_chi_square():
    """The rule as code (draws from a generator): the first emitted token over N draft samples."""
    N = 6000
    for p, q in random_dists(3, V=5)[:4]:
        g = make_generator(SamplingParams(seed=11))
        xs = torch.multinomial(q, N, replacement=True, generator=g).tolist()
        p2 = torch.stack([p, torch.full_like(p, 0.2)])  # the second row: the bonus distribution
        counts = torch.zeros(5, dtype=torch.float64)
        for x in xs:
            m, token = verify(p2, [x], q[None], g)
            counts[x if m == 1 else token] += 1
        assert_chi_square(counts, p, N)


def test_verify_with_deterministic_proposals_and_greedy():
    p = torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]], dtype=torch.float64)
    g = make_generator(SamplingParams(seed=0))
    assert verify(p, [0], None, g)[0] == 0  # p(0) = 0: always rejected ...
    assert all(verify(p, [0], None, g)[1] in (1, 2) for _ in range(50))  # ... and never emitted
    assert verify(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), [1], None, g) == (1, 0)  # p(1) = 1: kept
    with pytest.raises(InvalidArgument, match="probability 0"):
        verify(p, [0], torch.tensor([[0.0, 1.0, 0.0]]), g)
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 5.0], [0.0, 0.0, 1.0]])
    assert verify_greedy(logits, [1, 0]) == (2, 2)  # tie in row 1: the lowest id is the argmax
    assert verify_greedy(logits, [1, 2]) == (1, 0)
    assert verify_greedy(logits, [2, 0]) == (0, 1)
    assert verify_greedy(logits[:1], []) == (0, 1)


# ---- sampled output follows the target's distribution, whatever the proposer


def assert_chi_square(counts, probs, N):
    assert (counts[probs == 0] == 0).all(), "a token of probability 0 was emitted"
    live = probs > 0
    expected = N * probs[live]
    chi2 = float(((counts[live] - expected) ** 2 / expected).sum())
    dof = int(live.sum()) - 1
    assert chi2 < dof + 4 * math.sqrt(2 * dof) + 6, (chi2, dof)  # beyond the 99.9th percentile (dof <= 24)


class FixedProposer:
    """Proposes from a fixed q, far from the target's distribution (mass on what the target dislikes)."""

    def __init__(self, q: torch.Tensor):
        self.q = q

    def start(self, prompt, max_len, params, generator):
        self.generator = generator
        return self

    def propose(self, context, n):
        xs = torch.multinomial(self.q, n, replacement=True, generator=self.generator).tolist()
        return xs, self.q.expand(n, -1)


SMALL_V = 5


def target_joint(target, prompt, params) -> torch.Tensor:
    """(V * V,) exact probability of the first two tokens under the target's processed distribution."""
    with torch.no_grad():
        p1 = processed_probs(target(torch.tensor([prompt]))[0, -1], params).double()
        rows = [processed_probs(target(torch.tensor([prompt + [x]]))[0, -1], params).double() for x in range(SMALL_V)]
    return (p1[:, None] * torch.stack(rows)).reshape(-1)


@pytest.mark.parametrize("proposer", ["draft model", "adversarial q", "prompt lookup"])
def test_sampled_first_two_tokens_follow_the_target(proposer):
    """Chi-square of the (first, second) token pair over N seeded runs against the exact target joint:
    k = 2 proposals cover both tokens, so they come from acceptances, residuals and bonus draws."""
    target = tiny(0, vocab=SMALL_V, d_model=16, n_layers=1, init_std=0.5)
    params = SamplingParams(temperature=1.0, top_k=4)
    prompt = [0, 1, 2, 0, 1]
    joint = target_joint(target, prompt, params)
    p1 = joint.reshape(SMALL_V, SMALL_V).sum(1)
    if proposer == "draft model":
        draft = DraftModel(tiny(7, vocab=SMALL_V, d_model=16, n_layers=1, init_std=1.5))  # a very different model
    elif proposer == "adversarial q":
        q = 1.0 - p1 + 0.05  # most mass where the target has least (including its top-k-filtered token)
        draft = FixedProposer(q / q.sum())
    else:
        draft = NGramProposer(n_max=2, n_min=1)
    N = 800  # enough: a residual drawn from p instead of norm(max(0, p - q)) gives chi2 > 80 at N = 600
    counts = torch.zeros(SMALL_V * SMALL_V, dtype=torch.float64)
    proposed = accepted = 0
    for seed in range(N):
        run = SamplingParams(temperature=1.0, top_k=4, seed=seed)
        tokens, stats = speculative_generate(target, prompt, 3, run, draft=draft, k=2)
        counts[tokens[0] * SMALL_V + tokens[1]] += 1
        proposed, accepted = proposed + stats.proposed, accepted + stats.accepted
    assert 0 < accepted < proposed  # both branches of the rule were taken
    assert_chi_square(counts, joint, N)


# ---- cache rollback


@pytest.mark.parametrize("name", ["mha", "gqa", "mla", "sliding_window", "learned_positions"])
def test_rollback_equals_a_fresh_prefill(name):
    model = tiny(0, **VARIANTS[name])
    a, b, c = [1, 5, 9, 2, 7], [11, 12, 13, 14], [20, 21, 22]
    # bit for bit: torch's own linear, whose rounding does not depend on how many rows are computed at once
    with torch.no_grad(), use_backend("torch"):
        fresh = model(torch.tensor([a + c]))[0, len(a) :]  # (len(c), V)
        cache = model.new_cache(1, 40)
        model(torch.tensor([a[:2]]), cache=cache)
        model(torch.tensor([a[2:] + b]), cache=cache)
        rollback(cache, len(a))
        assert cache.length == len(a) and cache.next_pos.tolist() == [len(a)]
        rolled = model(torch.tensor([c]), cache=cache)[0]
        torch.testing.assert_close(rolled, fresh, rtol=0, atol=1e-10)
        rollback(cache, 3)  # back again, into what was prefilled, then on
        again = model(torch.tensor([a[3:] + c]), cache=cache)[0, -len(c) :]
        torch.testing.assert_close(again, fresh, rtol=0, atol=1e-10)
        rollback(cache, 0)
        torch.testing.assert_close(model(torch.tensor([a + c]), cache=cache)[0, len(a) :], fresh, rtol=0, atol=1e-10)
    with pytest.raises(InvalidArgument, match="roll a cache of"):
        rollback(cache, cache.length + 1)


def test_rollback_keeps_left_padded_rows_apart():
    model = tiny(0)
    cache = model.new_cache(2, 20)
    ids = torch.tensor([[0, 0, 4, 5], [1, 2, 3, 4]])
    positions = torch.tensor([[-1, -1, 0, 1], [0, 1, 2, 3]])
    with torch.no_grad():
        model(ids, cache=cache, positions=positions)
        model(torch.tensor([[7, 8], [7, 8]]), cache=cache)
        rollback(cache, 4)
        assert cache.next_pos.tolist() == [2, 4]
        rolled = model(torch.tensor([[9], [9]]), cache=cache)[:, -1]
    with torch.no_grad():
        fresh = torch.stack([model(torch.tensor([[4, 5, 9]]))[0, -1], model(torch.tensor([[1, 2, 3, 4, 9]]))[0, -1]])
    torch.testing.assert_close(rolled, fresh, rtol=0, atol=1e-10)


REFUSED = {
    "linear": ({"attention": "linear", "linear_chunk": 3, "n_kv_heads": 2}, "LinearAttentionState"),
    "wrapping window": ({"layer_pattern": "SL", "window": 4}, "sliding-window"),
}
if HAS_SSM:
    REFUSED["hybrid_ssm"] = ({"layer_pattern": "LM"}, "SSMState")


@pytest.mark.parametrize("name", list(REFUSED))
def test_caches_that_cannot_forget_are_refused(name):
    kw, what = REFUSED[name]
    model = tiny(0, **kw)
    with pytest.raises(InvalidArgument, match=what):
        check_rollback(model.new_cache(1, 30))
    with pytest.raises(InvalidArgument, match=f"layer \\d.*{what}|{what}.*layer"):
        speculative_generate(model, PROMPT, 10, GREEDY, draft=NGramProposer())
    with pytest.raises(InvalidArgument, match=what):  # a draft that cannot roll back: the same error
        speculative_generate(tiny(1), PROMPT, 10, GREEDY, draft=model)


# ---- bad input


def test_bad_input_is_refused():
    target = tiny(0)
    cases = [
        (dict(k=0), "k \\(proposals per round\\)"),
        (dict(k=2.5), "k \\(proposals per round\\)"),
        (dict(params=SamplingParams(repetition_penalty=1.2)), "penalties"),
        (dict(params=SamplingParams(presence_penalty=0.5)), "penalties"),
        (dict(params=SamplingParams(stop=["\n"])), "stop strings"),
        (dict(params=SamplingParams(n=2)), "n = 1"),
        (dict(params={"temperature": 0}), "SamplingParams"),
        (dict(draft=tiny(1, vocab=V + 1)), "vocabulary"),
        (dict(draft="small"), "draft must be"),
        (dict(prompt_ids=[]), "at least one token"),
        (dict(prompt_ids=[1, V]), "prompt ids"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=36), "max_len"),
        (dict(max_len=60, max_new_tokens=50, draft=tiny(1, positions="learned")), "draft's context_length"),
    ]
    for change, message in cases:
        args = dict(target=target, prompt_ids=PROMPT, max_new_tokens=10, params=GREEDY, draft=None, k=4) | change
        with pytest.raises(InvalidArgument, match=message):
            speculative_generate(**args)
    for n_max, n_min in [(2, 0), (1, 2), (2.0, 1)]:
        with pytest.raises(InvalidArgument, match="n_min <= n_max"):
            NGramProposer(n_max=n_max, n_min=n_min)


def test_a_misbehaving_proposer_is_refused():
    class Bad(FixedProposer):
        def propose(self, context, n):
            return [V] * n, None

    with pytest.raises(InvalidArgument, match="proposer returned"):
        speculative_generate(tiny(0), PROMPT, 10, SamplingParams(seed=0), draft=Bad(None), k=2)


# ---- measurement (no timing asserted)


def test_measure_reports_each_k():
    target = tiny(0)
    rows = measure(target, target, [PROMPT, [1, 2, 3]], ks=(2, 3), max_new_tokens=8, repeats=2)
    assert [r["k"] for r in rows] == [2, 3]
    for r in rows:
        assert r["acceptance_rate"] == 1.0 and r["identical"]
        assert r["seconds"] > 0 and r["baseline_seconds"] > 0 and r["speedup"] > 0
    rows = measure(target, NGramProposer(), [PROMPT], ks=(4,), max_new_tokens=8, params=SamplingParams(top_k=5))
    assert "identical" not in rows[0] and 0 <= rows[0]["acceptance_rate"] <= 1
