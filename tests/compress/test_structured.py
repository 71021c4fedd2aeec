"""Structured pruning on tiny random models: importance against a hand-written forward, exactness where it must
hold (nothing pruned; pruned units that contribute nothing), save/load of the smaller model, bad input."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.compress.structured import (
    Keep,
    calibration_tokens,
    importance,
    plan,
    prune_structured,
    select_heads,
    shrink,
    skip_loss_increase,
)
from scratchlm.errors import InvalidArgument
from scratchlm.model.config import ModelConfig, MoEConfig
from scratchlm.model.positions import apply_rotary
from scratchlm.model.transformer import TransformerLM

V = 257  # bytes + end-of-text: the plain byte tokenizer `save_model_dir` needs


def tiny(seed: int = 0, **kw) -> TransformerLM:
    """GQA by default: 6 query heads over 2 KV heads (3 per group), d_ff 48, 4 layers."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, context_length=32, d_model=48, n_layers=4, n_heads=6, n_kv_heads=2, d_ff=48)
    return TransformerLM(ModelConfig(**{**cfg, **kw})).eval()


def calib(n: int = 6, t: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (n, t), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(ids)


@torch.no_grad()
def reference_importance(model, ids):
    """Neuron, head and layer scores from a forward written out by hand (no hooks)."""
    cfg = model.config
    H, K, Dh = cfg.n_heads, cfg.kv_heads, cfg.dh
    ctx = model.step_context(ids, None, None)
    x = model.embed(ids)
    B, T, _ = x.shape
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    neurons, heads, layers = [], [], []
    for block in model.blocks.values():
        attn, mlp = block.mixer, block.mlp
        h = block.attn.norm_in(x)
        q = attn.q_proj(h).view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
        k = attn.k_proj(h).view(B, T, K, Dh).transpose(1, 2)  # (B, K, T, Dh)
        v = attn.v_proj(h).view(B, T, K, Dh).transpose(1, 2)
        q, k = apply_rotary(q, *ctx.rope), apply_rotary(k, *ctx.rope)
        k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)  # (B, H, T, Dh)
        s = (q @ k.transpose(-1, -2) / math.sqrt(Dh)).masked_fill(~causal, -math.inf)
        y = s.softmax(-1) @ v  # (B, H, T, Dh)
        heads.append(y.double().norm(dim=-1).mean((0, 2)))
        mid = block.attn(x, ctx)
        g = block.ffn.norm_in(mid)
        neurons.append((F.silu(mlp.gate(g)) * mlp.up(g)).double().abs().mean((0, 1)))
        out = block(x, ctx)
        layers.append(1 - F.cosine_similarity(x.double(), out.double(), dim=-1).mean())
        x = out
    return torch.stack(neurons), torch.stack(heads), torch.stack(layers)


def test_importance_matches_hand_written_forward():
    model, ids = tiny(), calib()
    scores = importance(model, ids, batch_size=4)  # two batches (4 + 2): the means run over all tokens
    neurons, heads, layers = reference_importance(model, ids)
    assert scores.neurons.shape == (4, 48) and scores.heads.shape == (4, 6) and scores.layers.shape == (4,)
    for got, want in ((scores.neurons, neurons), (scores.heads, heads), (scores.layers, layers)):
        err = (got - want).abs().max().item()
        assert err < 1e-5 * want.abs().max().item(), f"max abs error {err:.2e}"
    assert not any(m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks)  # hooks removed


def test_skip_loss_increase_matches_models_without_the_layer():
    model, ids = tiny(init_std=0.3), calib()  # large weights: every layer moves the loss visibly
    increase = skip_loss_increase(model, ids, batch_size=4)
    assert increase.abs().min() > 1e-2

    def loss(m):
        out = logits(m, ids)[:, :-1]
        return F.cross_entropy(out.flatten(0, 1), ids[:, 1:].flatten()).item()

    base = loss(model)
    full = {i: Keep(torch.arange(6), torch.arange(2), torch.arange(48)) for i in range(4)}
    for i in range(4):
        without = shrink(model, {j: k for j, k in full.items() if j != i})
        assert increase[i].item() == pytest.approx(loss(without) - base, rel=1e-4)
    assert [type(b).__name__ for b in model.blocks.values()] == ["Block"] * 4  # every block restored
    assert torch.equal(importance(model, ids, batch_size=4, layer_method="loss").layers, increase)


def test_select_heads_brute_force():
    scores = torch.tensor([5.0, 1.0, 3.0, 0.5, 0.2, 9.0, 2.0, 2.5, 0.1])  # 3 KV groups of 3 query heads
    q, kv = select_heads(scores, 3, 6, 3)  # keep every group, 2 best queries in each
    assert q.tolist() == [0, 2, 3, 5, 6, 7] and kv.tolist() == [0, 1, 2]
    q, kv = select_heads(scores, 3, 3, 1)  # group sums 9, 9.7, 4.6: keep group 1 whole
    assert q.tolist() == [3, 4, 5] and kv.tolist() == [1]
    q, kv = select_heads(scores, 3, 2, 2)  # groups 0 and 1, best query of each
    assert q.tolist() == [0, 5] and kv.tolist() == [0, 1]


@pytest.mark.parametrize(
    "kw", [dict(), dict(mlp="gelu", n_kv_heads=0, bias=True, norm="layernorm"), dict(qkv_bias=True, qk_norm=True)]
)
def test_pruning_nothing_is_identical(kw):
    model, ids = tiny(**kw), calib()
    cfg = model.config
    same = prune_structured(model, ids, d_ff=cfg.ff_dim, n_heads=cfg.n_heads, n_layers=cfg.n_layers)
    assert same is not model and same.config == dataclasses.replace(cfg, head_dim=cfg.dh, d_ff=cfg.ff_dim)
    assert torch.equal(logits(same, ids), logits(model, ids))
    assert same.blocks["0"].mixer.q_proj.weight.data_ptr() != model.blocks["0"].mixer.q_proj.weight.data_ptr()
    if cfg.tie_embeddings:
        assert same.head.weight is same.embed.weight


def test_dead_neurons_are_pruned_and_logits_unchanged():
    model, ids = tiny(), calib()
    dead = torch.tensor([1, 5, 7, 20, 33, 40, 41, 47])  # 8 of 48 in every layer
    with torch.no_grad():
        for block in model.blocks.values():
            block.mlp.gate.weight[dead] = 0.0  # silu(0) * up = 0: importance exactly 0
            block.mlp.down.weight[:, dead] = 0.0  # and no contribution to the output
    small = prune_structured(model, ids, d_ff=40)
    assert small.config.d_ff == 40 and small.num_params == model.num_params - 4 * 8 * 3 * 48
    torch.testing.assert_close(logits(small, ids), logits(model, ids), rtol=0, atol=1e-5)
    alive = torch.tensor([j for j in range(48) if j not in dead.tolist()])
    assert torch.equal(small.blocks["2"].mlp.up.weight, model.blocks["2"].mlp.up.weight[alive])


def test_query_heads_with_zero_o_proj_columns_pruned_exactly():
    model, ids = tiny(), calib()
    dh = model.config.dh
    drop = [1, 3]  # one query head in each KV group (group 0: heads 0-2, group 1: heads 3-5)
    with torch.no_grad():
        for block in model.blocks.values():
            for h in drop:
                block.mixer.o_proj.weight[:, h * dh : (h + 1) * dh] = 0.0
    q = torch.tensor([0, 2, 4, 5])
    keep = {i: Keep(q, torch.arange(2), torch.arange(48)) for i in range(4)}
    small = shrink(model, keep)
    assert (small.config.n_heads, small.config.n_kv_heads, small.config.head_dim) == (4, 2, dh)
    torch.testing.assert_close(logits(small, ids), logits(model, ids), rtol=0, atol=1e-5)


def test_kv_group_with_zero_values_pruned_exactly():
    """Zero V rows of KV head 1: its three query heads output 0 (importance 0), so n_kv_heads=1 drops them."""
    model, ids = tiny(), calib()
    dh = model.config.dh
    with torch.no_grad():
        for block in model.blocks.values():
            block.mixer.v_proj.weight[dh : 2 * dh] = 0.0
    scores = importance(model, ids)
    assert (scores.heads[:, 3:] == 0).all() and (scores.heads[:, :3] > 0).all()
    small = prune_structured(model, ids, n_heads=3, n_kv_heads=1, scores=scores)
    assert (small.config.n_heads, small.config.n_kv_heads) == (3, 1)
    torch.testing.assert_close(logits(small, ids), logits(model, ids), rtol=0, atol=1e-5)


def test_mha_heads_with_zero_values_pruned_exactly():
    model, ids = tiny(n_kv_heads=0), calib()
    dh = model.config.dh
    with torch.no_grad():
        for block in model.blocks.values():
            block.mixer.v_proj.weight[2 * dh : 3 * dh] = 0.0
            block.mixer.v_proj.weight[5 * dh : 6 * dh] = 0.0
    small = prune_structured(model, ids, n_heads=4)
    assert (small.config.n_heads, small.config.n_kv_heads) == (4, 0)  # still multi-head
    torch.testing.assert_close(logits(small, ids), logits(model, ids), rtol=0, atol=1e-5)


def test_identity_layer_dropped_exactly():
    model, ids = tiny(), calib()
    with torch.no_grad():  # pre-norm block with zero output projections: x + 0 + 0
        model.blocks["2"].mixer.o_proj.weight.zero_()
        model.blocks["2"].mlp.down.weight.zero_()
    scores = importance(model, ids)
    assert scores.layers[2] < 1e-12 and (scores.layers[[0, 1, 3]] > 0).all()
    small = prune_structured(model, ids, n_layers=3, scores=scores)
    assert small.config.n_layers == 3
    assert torch.equal(small.blocks["2"].mixer.q_proj.weight, model.blocks["3"].mixer.q_proj.weight)
    torch.testing.assert_close(logits(small, ids), logits(model, ids), rtol=0, atol=1e-5)


def test_layer_pattern_follows_kept_layers():
    model, ids = tiny(layer_pattern="SL", window=4), calib()
    scores = importance(model, ids)
    scores.layers = torch.tensor([1.0, 0.0, 1.0, 1.0])  # drop layer 1 (an L)
    small = prune_structured(model, ids, n_layers=3, scores=scores)
    assert small.config.layer_pattern == "SSL"
    assert [b.mixer.window for b in small.blocks.values()] == [4, 4, None]


def test_combined_prune_runs_saves_and_reloads(tmp_path):
    from scratchlm.model.model_dir import load_model, save_model_dir
    from scratchlm.tokenizer.chat import ChatTokenizer
    from scratchlm.tokenizer.tokenizer import Tokenizer

    model, ids = tiny(), calib()
    small = prune_structured(model, ids, d_ff=32, n_heads=4, n_layers=3)
    cfg = small.config
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff, cfg.head_dim) == (3, 4, 2, 32, 8)
    assert small.num_params < model.num_params
    chat = ChatTokenizer.plain(Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]))
    loaded, _ = load_model(save_model_dir(small, chat, tmp_path / "pruned"))
    assert loaded.config == cfg
    assert torch.equal(logits(loaded, ids), logits(small, ids))
    opt = torch.optim.SGD(small.parameters(), lr=0.1)  # a normal model: it trains
    small.train()
    small(ids).logsumexp(-1).mean().backward()
    opt.step()


def test_prune_keeps_dtype_and_leaves_original_alone():
    model, ids = tiny().to(torch.bfloat16), calib()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = prune_structured(model, ids, d_ff=24)
    assert small.embed.weight.dtype == torch.bfloat16 and not small.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(d_ff=0), r"d_ff must be an integer in \[1, 48\]"),
        (dict(d_ff=49), r"d_ff must be an integer in \[1, 48\]"),
        (dict(n_layers=5), r"n_layers must be an integer in \[1, 4\]"),
        (dict(n_heads=7), r"n_heads must be an integer in \[1, 6\]"),
        (dict(n_kv_heads=3), r"n_kv_heads must be an integer in \[1, 2\]"),
        (dict(n_heads=3), "pick n_heads a multiple of n_kv_heads"),
        (dict(n_heads=4, n_kv_heads=1), "at most its 3"),
        (dict(layer_method="mean"), "layer_method must be one of cosine, loss"),
    ],
)
def test_bad_targets(kw, match):
    model = tiny()
    with pytest.raises(InvalidArgument, match=match):
        prune_structured(model, calib(), **kw)


@pytest.mark.parametrize(
    ("tokens", "match"),
    [
        (torch.zeros(4, 16), r"\(N, T\) long tensor"),
        (torch.zeros(16, dtype=torch.long), r"\(N, T\) long tensor"),
        (torch.zeros(2, 33, dtype=torch.long), r"2\.\.32 tokens"),
        (torch.full((2, 8), V, dtype=torch.long), r"in \[0, 257\)"),
        ([[1, 2]], r"got list"),
    ],
)
def test_bad_calibration(tokens, match):
    with pytest.raises(InvalidArgument, match=match):
        importance(tiny(), tokens)


def test_calibration_tokens():
    ids = list(range(100))
    batch = calibration_tokens(ids, 3, 10)
    assert batch.shape == (3, 10) and batch.dtype == torch.long
    assert batch[1].tolist() == list(range(10, 20))
    assert torch.equal(calibration_tokens(torch.arange(100), 10, 10), torch.arange(100).view(10, 10))
    with pytest.raises(InvalidArgument, match=r"has 100 tokens, fewer than the 11 x 10 = 110 asked"):
        calibration_tokens(ids, 11, 10)
    with pytest.raises(InvalidArgument, match="length >= 2"):
        calibration_tokens(ids, 4, 1)


def test_unsupported_models_and_bad_plans():
    with pytest.raises(InvalidArgument, match="needs softmax attention"):
        prune_structured(tiny(attention="linear"), calib(), d_ff=24)
    with pytest.raises(InvalidArgument, match="not MoE"):
        prune_structured(tiny(moe=MoEConfig(num_experts=2)), calib(), d_ff=24)
    model = tiny()
    full = Keep(torch.arange(6), torch.arange(2), torch.arange(48))
    with pytest.raises(InvalidArgument, match="same"):
        shrink(model, {0: full, 1: Keep(torch.arange(6), torch.arange(2), torch.arange(40))})
    with pytest.raises(InvalidArgument, match="grouped in order"):  # head 3 reads KV head 1, not 0
        shrink(model, {0: Keep(torch.tensor([0, 3, 1, 4]), torch.arange(2), torch.arange(48))})
    with pytest.raises(InvalidArgument, match="layer 7 is not in the model"):
        shrink(model, {7: full})
    scores = importance(model, calib())
    assert sorted(plan(model, scores, n_layers=2)) == scores.layers.topk(2).indices.sort().values.tolist()


def test_real_smollm2_prunes_and_runs():
    from scratchlm.compress.prune import magnitude_prune, sparsity_report
    from scratchlm.eval.bpb import bits_per_byte
    from scratchlm.model import pretrained
    from scratchlm.model.model_dir import is_model_dir, load_model_dir

    path = pretrained.model_path("smollm2-135m-instruct")
    if not is_model_dir(path):
        pytest.skip(
            f"smollm2-135m-instruct is not pulled into {path} (run `scratchlm model pull smollm2-135m-instruct`)"
        )
    model, chat = load_model_dir(path)
    text = "The quick brown fox jumps over the lazy dog. Once upon a time, a small cat lived in a big house."
    ids = torch.tensor([chat.tokenizer.encode(text)[:24]] * 2)
    small = prune_structured(model, ids, d_ff=1024, n_heads=6, n_layers=26)
    assert (small.config.d_ff, small.config.n_heads, small.config.n_kv_heads, small.config.n_layers) == (1024, 6, 3, 26)
    out = logits(small, ids)
    assert out.shape == (2, 24, model.config.vocab_size) and torch.isfinite(out).all()
    dense = bits_per_byte(model, chat, text, context=64)["bits_per_byte"]
    magnitude_prune(model, 0.5, scope="layer")
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.5, abs=1e-6)
    pruned = bits_per_byte(model, chat, text, context=64)["bits_per_byte"]
    assert math.isfinite(pruned) and pruned > dense
