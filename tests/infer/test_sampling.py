"""Per-request sampling: each step against a direct reference (the plain `generate` filters, HF's logits
processors, hand-made cases), batch invariance (a row's token and logprobs are bit-identical whatever its
neighbours, position and batch size), seeds, the sampled distribution, validation."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.errors import InvalidArgument
from scratchlm.infer.sampling import (
    MAX_LOGPROBS,
    SamplingParams,
    TokenHistory,
    apply_penalties,
    filter_min_p,
    filter_top_k,
    filter_top_p,
    invert_cdf,
    make_generator,
    process_logits,
    sample,
)
from scratchlm.model.generate import top_k_filter, top_p_filter

NEG = float("-inf")


def rand_logits(B, V, seed=0, scale=3.0):
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * scale


def test_defaults_follow_vllm_and_openai():
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.max_tokens, p.n) == (1.0, 1.0, None, 0.0, 16, 1)
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.0, 0.0, 0.0)
    assert (p.seed, p.logprobs, p.stop, p.stop_token_ids, p.ignore_eos) == (None, None, [], [], False)
    assert not p.greedy and not p.needs_history
    assert SamplingParams(temperature=0).greedy and SamplingParams(temperature=1e-6).greedy
    assert SamplingParams(stop="###").stop == ["###"]  # OpenAI's single-string form


def test_greedy_is_argmax_of_the_raw_logits_ties_to_the_lowest_id():
    logits = rand_logits(5, 50)
    logits[2, [7, 31]] = 100.0  # a tie
    out = sample(logits, [SamplingParams(temperature=0, logprobs=3)] * 5)
    assert out.tokens.tolist() == logits.argmax(-1).tolist()
    assert out.tokens[2] == 7
    torch.testing.assert_close(out.logprobs, torch.log_softmax(logits, -1).gather(1, out.tokens[:, None])[:, 0])
    assert out.processed_logprobs.tolist() == [0.0] * 5  # a point mass


def test_plain_greedy_rows_match_the_log_softmax_path():
    """Greedy rows without penalties or top-n skip the (V,) log_softmax: same token, same logprob to ~1 ulp."""
    logits = rand_logits(6, 1031, seed=5)
    logits[3, [10, 900]] = 50.0  # a tie: the lowest id
    fast = sample(logits, [SamplingParams(temperature=0)] * 6)
    full = sample(logits, [SamplingParams(temperature=0, logprobs=0)] * 6)  # logprobs=0: the general path
    assert fast.tokens.tolist() == full.tokens.tolist() == logits.argmax(-1).tolist() and fast.tokens[3] == 10
    ref = torch.log_softmax(logits.double(), -1).gather(1, fast.tokens[:, None])[:, 0]
    assert (fast.logprobs.double() - ref).abs().max() < 1e-6 and (full.logprobs.double() - ref).abs().max() < 1e-6
    assert fast.logprobs.dtype == torch.float32 and fast.processed_logprobs.tolist() == [0.0] * 6
    half = sample(logits.bfloat16(), [SamplingParams(temperature=0)] * 6)  # a bf16 model's logits
    assert half.tokens.tolist() == logits.bfloat16().argmax(-1).tolist()


def test_logprobs_are_the_raw_log_softmax_and_top_n():
    logits = rand_logits(6, 101, seed=1)
    ps = [SamplingParams(temperature=0.7, top_k=5, repetition_penalty=1.3, seed=i, logprobs=i % 4) for i in range(6)]
    hist = [TokenHistory([1, 2, 3], 101) for _ in range(6)]
    out = sample(logits, ps, [make_generator(p) for p in ps], hist)
    ref = torch.log_softmax(logits, -1)
    for i in range(6):
        t = out.tokens[i]
        assert out.logprobs[i] == ref[i, t]  # raw, not the processed distribution
        n = i % 4
        assert out.top_ids[i].tolist() == ref[i].topk(n).indices.tolist()
        assert torch.equal(out.top_logprobs[i], ref[i].topk(n).values)
        proc = torch.log_softmax(process_logits(logits[i], ps[i], hist[i]), -1)
        assert out.processed_logprobs[i] == proc[t]
        assert torch.isfinite(proc[t])  # the chosen token survived the filters
    assert sample(logits[:1], [SamplingParams(temperature=0)]).top_ids == [None]


def test_top_k_matches_the_plain_filter_and_keeps_ties():
    row = rand_logits(1, 64, seed=2)[0]
    for k in (1, 3, 17, 63):
        assert torch.equal(filter_top_k(row, k), top_k_filter(row, k))
    for off in (None, 0, -1, 64, 1000):
        assert torch.equal(filter_top_k(row, off), row)
    tie = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0])
    assert filter_top_k(tie, 2).tolist() == [NEG, 3.0, 2.0, 2.0, NEG]  # HF / vLLM: the tie at the k-th value stays


def test_top_p_matches_the_plain_filter():
    logits = rand_logits(8, 64, seed=3)
    for p in (0.05, 0.3, 0.5, 0.9, 0.999, 0.99999):
        for row in logits:
            assert torch.equal(filter_top_p(row, p), top_p_filter(row, p))
    # peaked to flat rows of a large vocabulary, where only a few candidates are sorted; ties; -inf
    big = torch.cat([rand_logits(6, 5000, seed=5, scale=s) for s in (0.1, 1.0, 3.0, 10.0)])
    big[1, 50:4000] = NEG
    for p in (0.1, 0.5, 0.9, 0.95, 0.999, 0.9999, 0.99991, 0.999999):  # 1 - p < 1e-4: all V sorted
        for row in big:
            assert torch.equal(filter_top_p(row, p), top_p_filter(row, p))
    # ties: the stable sort puts the lower ids ahead (the plain filter's unstable sort leaves it open)
    assert torch.isfinite(filter_top_p(torch.zeros(4), 0.5)).tolist() == [True, True, False, False]
    tie = torch.zeros(5000)
    tie[[4000, 7, 300]] = 20.0  # a third of the mass each
    assert torch.isfinite(filter_top_p(tie, 0.5)).nonzero()[:, 0].tolist() == [7, 300]
    assert torch.equal(filter_top_p(logits[0], 1.0), logits[0])
    # probabilities 0.5, 0.3, 0.2: p = 0.5 keeps the first only (mass ahead of the second is 0.5, not < 0.5)
    row = torch.tensor([0.5, 0.3, 0.2]).log()
    assert torch.isfinite(filter_top_p(row, 0.5)).tolist() == [True, False, False]
    assert torch.isfinite(filter_top_p(row, 0.51)).tolist() == [True, True, False]


def test_min_p_by_hand():
    row = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04]).log()
    assert torch.isfinite(filter_min_p(row, 0.15)).tolist() == [True, True, True, False, False]  # >= 0.075
    assert torch.isfinite(filter_min_p(row, 1.0)).tolist() == [True, False, False, False, False]
    assert torch.equal(filter_min_p(row, 0.0), row)


def test_penalties_by_hand():
    row = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0, 0.0])
    hist = TokenHistory.from_tokens(prompt_ids=[0, 1], output_ids=[3, 3, 5, 3], vocab_size=6)
    assert hist.seen.tolist() == [True, True, False, True, False, True]
    assert hist.output_counts.tolist() == [0, 0, 0, 3, 0, 1]
    # HF / CTRL: a seen positive logit is divided, a seen negative one multiplied
    rep = apply_penalties(row, SamplingParams(repetition_penalty=2.0), hist)
    assert rep.tolist() == [1.0, -2.0, 0.5, 1.5, -2.0, 0.0]
    # OpenAI: over the output only (ids 0 and 1 are in the prompt only)
    fp = apply_penalties(row, SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), hist)
    assert fp.tolist() == [2.0, -1.0, 0.5, 3.0 - 1.5 - 0.25, -2.0, -0.5 - 0.25]
    both = apply_penalties(row, SamplingParams(repetition_penalty=2.0, frequency_penalty=1.0), hist)
    assert both.tolist() == [1.0, -2.0, 0.5, 1.5 - 3.0, -2.0, -1.0]  # repetition first, then frequency
    with pytest.raises(InvalidArgument, match="TokenHistory"):
        sample(row[None], [SamplingParams(temperature=0, repetition_penalty=1.2)])
    # greedy takes the argmax of the penalised logits
    out = sample(row[None], [SamplingParams(temperature=0, frequency_penalty=2.0)], histories=[hist])
    assert out.tokens.tolist() == [0]


def test_inverse_cdf_never_picks_a_zero_probability_id():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0])
    for u, want in [(0.0, 1), (0.25, 1), (0.5, 3), (math.nextafter(1.0, 0.0), 3), (1.0, 3)]:
        assert invert_cdf(probs, torch.tensor(u, dtype=torch.float64)) == want, u
    assert invert_cdf(torch.tensor([2.0, 6.0]), torch.tensor(0.3, dtype=torch.float64)) == 1  # unnormalised


def test_history_append_and_fork():
    h = TokenHistory([4, 4, 2], vocab_size=8)
    f = h.fork()
    h.append(7)
    h.append([2, 2])
    assert h.output_counts.tolist() == [0, 0, 2, 0, 0, 0, 0, 1]
    assert h.seen.nonzero()[:, 0].tolist() == [2, 4, 7]
    assert f.output_counts.sum() == 0 and f.seen.nonzero()[:, 0].tolist() == [2, 4]


def test_processors_match_transformers():
    lp = pytest.importorskip("transformers.generation.logits_process")
    logits = rand_logits(4, 40, seed=4)
    prompts = [[1, 2, 3, 3], [0, 39], [5], [10, 11, 12, 13, 14]]
    ids = torch.tensor([(p * 5)[:5] for p in prompts])  # HF reads the ids as a set; equal-length rows
    hf = lp.RepetitionPenaltyLogitsProcessor(1.7)(ids, logits.clone())
    hf = lp.TemperatureLogitsWarper(0.8)(ids, hf)
    hf = lp.TopKLogitsWarper(10)(ids, hf)
    hf = lp.TopPLogitsWarper(0.9)(ids, hf)
    hf = lp.MinPLogitsWarper(0.05)(ids, hf)
    p = SamplingParams(repetition_penalty=1.7, temperature=0.8, top_k=10, top_p=0.9, min_p=0.05)
    for i, prompt in enumerate(prompts):
        ours = process_logits(logits[i], p, TokenHistory(prompt, 40))
        assert torch.equal(torch.isfinite(ours), torch.isfinite(hf[i]))  # the same tokens kept
        torch.testing.assert_close(ours, hf[i], rtol=1e-6, atol=1e-6)


def mixed_params():
    """Every kind of row: greedy, greedy + penalties, plain, each filter, all of them, logprobs."""
    return [
        SamplingParams(temperature=0),
        SamplingParams(temperature=0, repetition_penalty=1.5, logprobs=3),
        SamplingParams(seed=11),
        SamplingParams(temperature=0.6, top_k=7, seed=12, logprobs=5),
        SamplingParams(temperature=1.3, top_p=0.8, seed=13),
        SamplingParams(temperature=0.9, min_p=0.1, seed=14, logprobs=0),
        SamplingParams(
            temperature=0.7, top_k=50, top_p=0.95, min_p=0.02, repetition_penalty=1.2, presence_penalty=0.5,
            frequency_penalty=0.3, seed=15, logprobs=MAX_LOGPROBS,
        ),
    ]  # fmt: skip


def run_steps(requests, V, B, positions, neighbours_seed, steps=6):
    """Decode `steps` steps of `requests` ({request id: params}), request r at row `positions[r]` of a
    batch of B whose other rows are random neighbours with random params. A request's logits at each
    step depend only on its id and the step. -> {request id: its per-step outputs}."""
    gens = {r: make_generator(p) for r, p in requests.items()}
    hists = {r: TokenHistory([r, 2 * r + 1], V) for r in requests}
    extra = torch.Generator().manual_seed(neighbours_seed)
    results = {r: [] for r in requests}
    for step in range(steps):
        logits = torch.randn(B, V, generator=extra) * 4  # (B, V)
        ps = [SamplingParams(temperature=float(torch.rand(1, generator=extra)), seed=j) for j in range(B)]
        gs = [make_generator(p) for p in ps]
        hs = [None] * B
        for r, pos in positions.items():
            logits[pos] = rand_logits(1, V, seed=1000 * r + step)[0]
            ps[pos], gs[pos], hs[pos] = requests[r], gens[r], hists[r]
        out = sample(logits, ps, gs, hs)
        for r, pos in positions.items():
            hists[r].append(out.tokens[pos].item())
            fields = (out.tokens, out.logprobs, out.processed_logprobs, out.top_ids, out.top_logprobs)
            results[r].append([f[pos] for f in fields])
    return results


def assert_bitwise_equal(a, b):
    for x, y in zip(a, b, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), (x, y)  # same bits (no NaNs here)


@pytest.mark.parametrize("V", [1031, 256])  # an odd vocabulary puts rows at unaligned offsets
def test_batch_invariance(V):
    requests = dict(enumerate(mixed_params()))
    alone = {r: run_steps({r: p}, V, 1, {r: 0}, 0)[r] for r, p in requests.items()}
    ids = list(requests)
    # the same requests together, reversed, then scattered in a batch of 23 among other neighbours
    for B, order, seed in [(7, ids, 1), (7, ids[::-1], 2), (23, [22, 3, 9, 0, 17, 5, 11], 3)]:
        together = run_steps(requests, V, B, dict(zip(ids, order)), seed)
        for r in ids:
            for a, b in zip(alone[r], together[r], strict=True):
                assert_bitwise_equal(a, b)
        assert len({tuple(t[0].item() for t in together[r]) for r in ids}) > 1  # not a degenerate test


def test_same_seed_same_sequence_and_seeds_differ():
    V = 300

    def tokens(seed, sample_index=0):
        p = SamplingParams(temperature=1.5, seed=seed)
        g = make_generator(p, sample_index=sample_index)
        return [sample(rand_logits(1, V, seed=s), [p], [g]).tokens.item() for s in range(20)]

    assert tokens(3) == tokens(3)
    assert tokens(3) != tokens(4)
    assert tokens(3, sample_index=1) == tokens(3, sample_index=1)
    assert tokens(3, sample_index=1) != tokens(3) and tokens(3, sample_index=1) != tokens(4)
    g1, g2 = make_generator(SamplingParams()), make_generator(SamplingParams())
    assert g1.initial_seed() != g2.initial_seed()  # seed None: nondeterministic


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_k=4, top_p=0.9),
        SamplingParams(temperature=1.4, min_p=0.1, presence_penalty=0.8, repetition_penalty=1.3),
    ],
)
def test_draws_follow_the_processed_distribution(params):
    """Chi-square of N draws against the processed probabilities (fixed seed: deterministic)."""
    V, N = 8, 6000
    logits = torch.tensor([2.0, 1.5, 1.0, 0.7, 0.3, 0.0, -0.5, -1.0])
    hist = TokenHistory.from_tokens([0], [1, 1], V)
    probs = torch.softmax(process_logits(logits, params, hist), -1).double()
    g = make_generator(SamplingParams(seed=123))
    out = sample(logits.expand(N, V), [params] * N, [g] * N, [hist] * N)  # one generator: N successive draws
    counts = torch.bincount(out.tokens, minlength=V).double()
    assert (counts[probs == 0] == 0).all()  # filtered tokens are never drawn
    live = probs > 0
    expected = N * probs[live]
    chi2 = float(((counts[live] - expected) ** 2 / expected).sum())
    dof = int(live.sum()) - 1
    assert chi2 < dof + 4 * math.sqrt(2 * dof) + 6, (chi2, dof)  # far beyond the 99.9th percentile for dof <= 7
    torch.testing.assert_close(out.processed_logprobs, probs.float().log()[out.tokens])


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("top_k", -2),
        ("top_k", 2.5),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("min_p", -0.01),
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3.0),
        ("seed", 2**64),
        ("seed", "1"),
        ("max_tokens", 0),
        ("max_tokens", 1.5),
        ("n", 0),
        ("n", True),
        ("logprobs", -1),
        ("logprobs", MAX_LOGPROBS + 1),
        ("stop", [""]),
        ("stop", ["a", 3]),
        ("stop", ["s"] * 33),
        ("stop_token_ids", [-1]),
        ("stop_token_ids", 5),
        ("ignore_eos", "yes"),
    ],
)
def test_impossible_values_are_named(field, value):
    with pytest.raises(InvalidArgument, match=field):
        SamplingParams(**{field: value})
    p = SamplingParams()
    setattr(p, field, value)  # edited after construction: validate() re-checks
    with pytest.raises(InvalidArgument, match=field):
        p.validate()


def test_edge_values_are_accepted():
    SamplingParams(temperature=0, top_k=-1, top_p=1e-9, min_p=1.0, repetition_penalty=0.5, max_tokens=None)
    SamplingParams(presence_penalty=-2, frequency_penalty=2, seed=-(2**63), logprobs=0, stop=["s"] * 32)


def test_bad_batches():
    logits = rand_logits(2, 10)
    with pytest.raises(InvalidArgument, match="2 rows"):
        sample(logits, [SamplingParams()])
    with pytest.raises(InvalidArgument, match="generator"):
        sample(logits, [SamplingParams(), SamplingParams()])
    with pytest.raises(InvalidArgument, match=r"\(B, V\)"):
        sample(logits[0], [SamplingParams()])
    out = sample(logits[:0], [])
    assert out.tokens.shape == (0,) and out.tokens.dtype == torch.long
    # top_k and logprobs beyond the vocabulary are clamped
    out = sample(logits, [SamplingParams(top_k=50, logprobs=20, seed=0)] * 2, [torch.Generator().manual_seed(0)] * 2)
    assert out.top_ids[0].shape == (10,)
