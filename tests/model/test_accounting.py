"""Accounting: parameter groups add up, FLOPs agree with torch's FlopCounterMode, memory and KV
cache estimates agree with the real tensors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from scratchlm.config import load_config
from scratchlm.errors import ScratchLMError
from scratchlm.model import MLAConfig, ModelConfig, MoEConfig, SSMConfig, TransformerLM
from scratchlm.model.accounting import (
    FLOP_GROUPS,
    active_params,
    causal_context,
    count_params,
    flops_per_token,
    kv_cache_bytes,
    kv_cache_per_token,
    memory_estimate,
    param_groups,
)

BASE = dict(vocab_size=97, context_length=32, d_model=32, n_layers=2, n_heads=4)
MOE = MoEConfig(num_experts=4, top_k=2, shared_expert=True, d_expert=48)

CONFIGS = {
    "dense tied": {},
    "untied learned positions layernorm bias": dict(
        tie_embeddings=False, positions="learned", norm="layernorm", bias=True, mlp="gelu_tanh"
    ),
    "gqa qk-norm": dict(n_kv_heads=2, qk_norm=True),
    "mqa relu untied": dict(n_kv_heads=1, mlp="relu", tie_embeddings=False),
    "sliding window": dict(layer_pattern="SL", window=5),
    "moe shared": dict(moe=MOE),
    "moe top1 no shared gelu": dict(moe=MoEConfig(num_experts=3, top_k=1), mlp="gelu"),
    "mla": dict(attention="mla", mla=MLAConfig(kv_lora_rank=16, rope_head_dim=4)),
    "mla q-lora nope": dict(attention="mla", positions="none", mla=MLAConfig(kv_lora_rank=16, q_lora_rank=24)),
    "linear gqa": dict(attention="linear", n_kv_heads=2, linear_chunk=8),
    "ssm hybrid": dict(layer_pattern="ML", ssm=SSMConfig(state_dim=8)),
}


def cfg_of(kw: dict) -> ModelConfig:
    return ModelConfig(**{**BASE, **kw})


@pytest.mark.parametrize("kw", CONFIGS.values(), ids=CONFIGS.keys())
def test_groups_sum_to_numel(kw):
    cfg = cfg_of(kw)
    model = TransformerLM(cfg)
    groups = param_groups(model)  # asserts the sum itself; check it independently too
    assert sum(groups.values()) == sum(p.numel() for p in model.parameters())
    V, D = cfg.vocab_size, cfg.d_model
    assert groups["head"] == (0 if cfg.tie_embeddings else V * D)
    assert groups["embeddings"] == V * D + (cfg.context_length * D if cfg.positions == "learned" else 0)
    # meta-device counts equal the real model's
    assert {k: v for k, v in count_params(cfg).items() if k in groups} == groups


def test_group_contents():
    cfg = cfg_of(dict(moe=MOE, n_kv_heads=2, qk_norm=True))
    model = TransformerLM(cfg)
    g = param_groups(model)
    D, L, Dh = 32, 2, 8
    assert g["router"] == L * D * 4
    assert g["experts"] == L * 4 * 3 * D * 48 and g["shared_expert"] == L * 3 * D * 48 and g["mlp"] == 0
    assert g["mixer"] == L * (D * 4 * Dh + 2 * D * 2 * Dh + 4 * Dh * D)  # q, k/v (2 kv heads), o
    assert g["norms"] == L * (2 * D + 2 * Dh) + D  # block norms, q/k norms, final norm
    total = sum(g.values())
    assert active_params(model) == total - g["experts"] // 2  # top 2 of 4 experts
    dense = TransformerLM(cfg_of({}))
    assert active_params(dense) == dense.num_params


def test_gpt2_small_preset_param_count_on_meta():
    counts = count_params(load_config(ModelConfig, "model", "gpt2-small"))
    assert counts["total"] == 124_439_808
    assert counts["head"] == 0 and counts["embeddings"] == (50257 + 1024) * 768
    assert counts["matmul"] == counts["total"] - 1024 * 768  # head matmul counted, wpe lookup not


def counted_flops(model: TransformerLM, ids: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as fc:
        model(ids)
    return fc.get_total_flops()


# FlopCounterMode does not see CPU's fused SDPA kernel (it counts 0 for it in torch 2.x on CPU), so
# attention runs on the `own` backend, whose matmuls compute the full T x T scores and mask them:
# that is the dense (causal=False) count.
FLOP_CONFIGS = {k: v for k, v in CONFIGS.items() if not k.startswith("ssm")}


@pytest.mark.parametrize("kw", FLOP_CONFIGS.values(), ids=FLOP_CONFIGS.keys())
def test_forward_flops_match_flop_counter(kw):
    cfg = cfg_of({**kw, "attn_backend": "own"})
    T = 20  # not a multiple of linear_chunk=8: the padded last chunk is counted too
    torch.manual_seed(0)
    model = TransformerLM(cfg).eval()
    B = 2
    counted = counted_flops(model, torch.randint(0, cfg.vocab_size, (B, T)))
    ours = flops_per_token(cfg, T, causal=False)["forward"] * B * T
    assert abs(ours - counted) / counted < 0.01, (ours, counted)


def test_ssm_projection_flops_match_flop_counter():
    """The SSM's matmuls are its projections; FlopCounterMode also counts the complex Vandermonde
    einsum of the kernel (H x N/2 x T complex multiply-adds, counted by it as 2 H N/2 T)."""
    cfg = cfg_of(dict(layer_pattern="M", ssm=SSMConfig(state_dim=8)))
    model = TransformerLM(cfg).eval()
    B, T = 2, 16
    counted = counted_flops(model, torch.randint(0, 97, (B, T)))
    f = flops_per_token(cfg, T, causal=False)
    matmuls = (f["forward"] - f["state"]) * B * T
    kernel = cfg.n_layers * 2 * cfg.d_model * 4 * T
    assert abs(matmuls + kernel - counted) / counted < 0.01


def test_flop_totals_and_causal_context():
    for T, w in [(10, None), (10, 3), (10, 10), (10, 20), (1, 4)]:
        brute = sum(min(t + 1, w or T) for t in range(T)) / T
        assert causal_context(T, w) == pytest.approx(brute)
    cfg = cfg_of({})
    f = flops_per_token(cfg, 32)
    assert set(FLOP_GROUPS) <= set(f)
    assert f["forward"] == pytest.approx(sum(f[g] for g in FLOP_GROUPS))
    assert f["backward"] == 2 * f["forward"] and f["train"] == 3 * f["forward"]
    assert f["6N"] == 6 * count_params(cfg)["matmul"]
    dense = flops_per_token(cfg, 32, causal=False)
    assert dense["scores"] == pytest.approx(f["scores"] * 32 / 16.5)
    # sliding window: bounded context
    sw = flops_per_token(cfg_of(dict(layer_pattern="S", window=4)), 1000)
    assert sw["scores"] == pytest.approx(2 * 2 * 4 * 8 * causal_context(1000, 4))


def test_gpt2_small_flops_close_to_6n():
    f = flops_per_token(load_config(ModelConfig, "model", "gpt2-small"), 1024)
    assert f["head"] == 2 * 768 * 50257
    assert 1.0 < f["train"] / f["6N"] < 1.15  # 6N leaves out the attention scores (~7% here)


def real_cache_bytes(model: TransformerLM, batch: int, max_len: int) -> int:
    cache = model.new_cache(batch, max_len)
    total = 0
    for layer in cache.layers:
        for v in vars(layer).values():
            if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()):  # not positions
                total += v.numel() * v.element_size()
    return total


@pytest.mark.parametrize(
    "kw",
    [{}, dict(n_kv_heads=2), dict(layer_pattern="SL", window=5), CONFIGS["mla"], CONFIGS["mla q-lora nope"],
     CONFIGS["linear gqa"], CONFIGS["ssm hybrid"]],
    ids=["mha", "gqa", "sliding", "mla", "mla-nope", "linear", "ssm"],
)  # fmt: skip
def test_kv_cache_estimate_matches_real_cache(kw):
    cfg = cfg_of(kw)
    model = TransformerLM(cfg)
    for T in (3, 20):
        assert kv_cache_bytes(cfg, 2, T, 4) == real_cache_bytes(model, 2, T)


def test_kv_cache_per_token_kinds():
    assert kv_cache_per_token(cfg_of({}), 2) == {"full": 2 * (2 * 4 * 8 * 2), "sliding": 0, "mla": 0, "state": 0}
    sw = cfg_of(dict(layer_pattern="S", window=4))
    assert kv_cache_bytes(sw, 1, 100, 2) == kv_cache_bytes(sw, 1, 4, 2) == 4 * kv_cache_per_token(sw, 2)["sliding"]
    lin = cfg_of(CONFIGS["linear gqa"])
    assert kv_cache_bytes(lin, 1, 10, 2) == kv_cache_bytes(lin, 1, 1000, 2) > 0
    gpt2 = kv_cache_per_token(load_config(ModelConfig, "model", "gpt2-small"), 2)
    assert gpt2["full"] == 2 * 12 * 768 * 2  # 36 KiB per token in bf16


def test_memory_estimate_weights_grads_optimizer():
    cfg = cfg_of(dict(moe=MOE))
    n = count_params(cfg)["total"]
    bf16 = memory_estimate(cfg, batch=2, seq_len=16, dtype_bytes=2)
    assert (bf16["weights"], bf16["grads"], bf16["optimizer"]) == (2 * n, 2 * n, 12 * n)  # m, v + fp32 master
    fp32 = memory_estimate(cfg, batch=2, seq_len=16, dtype_bytes=4)
    assert (fp32["weights"], fp32["grads"], fp32["optimizer"]) == (4 * n, 4 * n, 8 * n)
    assert memory_estimate(cfg, 2, 16, 4, optimizer="sgd")["optimizer"] == 4 * n
    assert memory_estimate(cfg, 2, 16, 2, optimizer="none")["grads"] == 0
    assert memory_estimate(cfg, 4, 16, 2)["activations"] == pytest.approx(2 * bf16["activations"])
    assert bf16["train_total"] == sum(bf16[k] for k in ("weights", "grads", "optimizer", "activations"))
    with pytest.raises(ScratchLMError, match="unknown optimizer 'adam'"):
        memory_estimate(cfg, 2, 16, 2, optimizer="adam")


def saved_activation_bytes(model: TransformerLM, ids: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves for backward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(ids)
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
    return sum(seen.values())


@pytest.mark.parametrize("kw", [{}, dict(moe=MOE), dict(mlp="gelu", n_kv_heads=2)], ids=["dense", "moe", "gelu-gqa"])
def test_activation_estimate_is_the_right_order_of_magnitude(kw):
    cfg = cfg_of({**kw, "vocab_size": 64})
    model = TransformerLM(cfg)
    B, T = 2, 32
    real = saved_activation_bytes(model, torch.randint(0, 64, (B, T)))
    est = memory_estimate(cfg, B, T, 4)["activations"]
    assert 0.5 < est / real < 2.0, (est, real)


@pytest.mark.parametrize("name", ["dense tied", "moe shared", "ssm hybrid", "mla"])
def test_role_counts_partition_and_agree_with_groups(name):
    from scratchlm.model.accounting import role_counts

    model = TransformerLM(cfg_of(CONFIGS[name]))
    roles = role_counts(model)
    groups = param_groups(model)
    assert sum(roles.values()) == model.num_params
    assert roles["embedding"] + roles["head"] == groups["embeddings"] + groups["head"]
    # experts: the stacked weights are "expert", their biases "norm_bias"
    bias = sum(p.numel() for n, p in model.named_parameters() if ".experts.b_" in n)
    assert roles["expert"] == groups["experts"] - bias
    ssm = sum(p.numel() for n, p in model.named_parameters() if ".ssm." in n)
    assert roles["ssm"] == ssm
