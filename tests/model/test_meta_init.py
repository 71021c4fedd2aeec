"""Construction on the meta device + one init_weights() == eager construction; every tensor is set once."""

from __future__ import annotations

import pytest
import torch

from scratchlm.model import MLAConfig, ModelConfig, SSMConfig, TransformerLM
from scratchlm.model.config import MoEConfig
from scratchlm.model.primitives import Linear

CONFIGS = {
    "dense_tied": {},
    "gqa_untied_qknorm_window": dict(n_kv_heads=2, tie_embeddings=False, qk_norm=True, layer_pattern="LS", window=4),
    "learned_positions_bias": dict(positions="learned", bias=True, norm="layernorm", mlp="gelu"),
    "sinusoidal": dict(positions="sinusoidal"),
    "mla": dict(attention="mla", mla=MLAConfig(kv_lora_rank=8, q_lora_rank=8, rope_head_dim=4)),
    "moe_ssm": dict(
        layer_pattern="LM", moe=MoEConfig(num_experts=4, top_k=2, shared_expert=True), ssm=SSMConfig(state_dim=4)
    ),
}


def cfg_of(kw) -> ModelConfig:
    return ModelConfig(**(dict(vocab_size=64, context_length=32, d_model=32, n_layers=3, n_heads=4) | kw))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_meta_then_init_weights_equals_eager(name):
    cfg = cfg_of(CONFIGS[name])
    torch.manual_seed(7)
    eager = TransformerLM(cfg)
    with torch.device("meta"):
        meta = TransformerLM(cfg)
    assert all(p.is_meta for p in meta.parameters())
    meta.to_empty(device="cpu")
    torch.manual_seed(7)
    meta.init_weights()
    a, b = eager.state_dict(), meta.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{name}: {k} differs between meta + init_weights and eager"
    for (n, x), (_, y) in zip(eager.named_buffers(), meta.named_buffers(), strict=True):  # RoPE / sinusoid
        assert torch.equal(x, y), n
    if cfg.tie_embeddings:
        assert meta.head.weight is meta.embed.weight
    ids = torch.randint(0, 64, (2, 12))
    torch.testing.assert_close(eager(ids), meta(ids), rtol=0, atol=0)


def test_init_statistics_follow_the_documented_rule():
    cfg = cfg_of(dict(n_layers=8, d_model=128, d_ff=512, init_std=0.02, tie_embeddings=False))
    torch.manual_seed(0)
    m = TransformerLM(cfg)
    scaled = 0.02 / (2 * cfg.n_layers) ** 0.5
    for name, mod in m.named_modules():
        if isinstance(mod, Linear):
            want = scaled if mod.residual_out else 0.02
            std = mod.weight.std().item()
            assert abs(std - want * 0.987) < 0.1 * want, (
                f"{name}: std {std:.5f}, want ~{want * 0.987:.5f}"
            )  # trunc at 3 std
    assert torch.all(m.blocks["0"].attn.norm_in.weight == 1)


def test_each_tensor_is_initialised_once(monkeypatch):
    """init_weights calls each module's reset_parameters exactly once (no init in __init__ that it repeats)."""
    calls: dict[int, int] = {}
    import scratchlm.model.primitives as prim

    orig = prim.Linear.reset_parameters

    def counting(self, std=None):
        calls[id(self)] = calls.get(id(self), 0) + 1
        return orig(self, std)

    monkeypatch.setattr(prim.Linear, "reset_parameters", counting)
    with torch.device("meta"):
        m = TransformerLM(cfg_of({}))
    calls.clear()  # construction on meta: free, values discarded
    m.to_empty(device="cpu")
    m.init_weights()
    linears = [id(x) for x in m.modules() if isinstance(x, Linear) and x is not m.head]  # tied head: the embedding
    assert sorted(calls) == sorted(linears) and set(calls.values()) == {1}
