"""The model's own accounting: parameters by group, FLOPs per token, memory.

    groups = param_groups(model)                  # {"embeddings": ..., "mixer": ..., ...}, sums to numel
    roles = role_counts(model)                    # {"matrix": ..., "embedding": ..., ...}: the optimizer's partition
    flops = flops_per_token(cfg, seq_len=1024)    # forward FLOPs per token by matmul group, + totals
    mem = memory_estimate(cfg, batch=8, seq_len=1024, dtype_bytes=2)

The config-level functions build the model on the meta device (no memory, no init cost) when they
need parameter counts, so one set of module classes is the single source of truth for sizes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scratchlm.errors import ScratchLMError
from scratchlm.model.attend import backend_name
from scratchlm.model.config import ModelConfig
from scratchlm.model.norms import Norm

# Parameter groups (each parameter in exactly one; tied weights counted once, under "embeddings"):
#   embeddings     token embedding + learned absolute positions
#   mixer          every sequence-mixer parameter except its norms: softmax attention q/k/v/o, MLA
#                  projections, linear attention, SSM (A, dt, C, D and its projections)
#   mlp            dense feed-forward (non-MoE layers)
#   experts        routed MoE experts (all E of them)
#   shared_expert  the always-on MoE expert
#   router         MoE router
#   norms          every RMSNorm / LayerNorm gain and bias (block, final, QK-norm, MLA latent norms)
#   head           output projection; 0 when tied to the token embedding
PARAM_GROUPS = ("embeddings", "mixer", "mlp", "experts", "shared_expert", "router", "norms", "head")

# Forward matmul FLOP groups of `flops_per_token` (they sum to its "forward"):
#   qkv      mixer input projections: q/k/v; MLA's q, latent down and up projections; SSM in_proj
#   out      mixer output projection (o_proj; SSM out_proj)
#   scores   q k^T (softmax and MLA; linear attention: inside-chunk phi(q) phi(k)^T and phi(q) z)
#   values   probabilities x V (linear attention: inside-chunk A V and phi(q) S of earlier chunks)
#   state    linear attention's per-chunk phi(k)^T V; the SSM's FFT convolution and kernel
#   mlp, experts (active ones only), shared_expert, router, head
FLOP_GROUPS = ("qkv", "out", "scores", "values", "state", "mlp", "experts", "shared_expert", "router", "head")

OPTIMIZER_STATE_BYTES = {"adamw": 8, "sgd": 4, "none": 0}  # fp32 bytes per parameter: m and v / momentum


# ---------------------------------------------------------------------------------------------
# parameters


def param_groups(model: nn.Module) -> dict[str, int]:
    """Parameter count by group (see PARAM_GROUPS); asserts the groups sum to the model's numel."""
    from scratchlm.model.moe import MoE

    groups = dict.fromkeys(PARAM_GROUPS, 0)
    seen: set[int] = set()

    def add(group: str, params) -> None:
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                groups[group] += p.numel()

    for m in model.modules():  # norms first, wherever they sit (block, final, inside mixers)
        if isinstance(m, Norm):
            add("norms", m.parameters(recurse=False))
    add("embeddings", model.embed.parameters())
    if model.pos_embed is not None:
        add("embeddings", model.pos_embed.parameters())
    for block in model.blocks.values():
        add("mixer", block.mixer.parameters())
        mlp = block.mlp
        if isinstance(mlp, MoE):
            add("router", mlp.router.parameters())
            add("experts", mlp.experts.parameters())
            if mlp.shared is not None:
                add("shared_expert", mlp.shared.parameters())
        else:
            add("mlp", mlp.parameters())
    add("head", model.head.parameters())  # nothing added when tied: already counted as embeddings
    total = sum(p.numel() for p in model.parameters())
    missing = [n for n, p in model.named_parameters() if id(p) not in seen]
    assert sum(groups.values()) == total and not missing, f"parameters in no group: {missing}"
    return groups


def role_counts(model: nn.Module) -> dict[str, int]:
    """Parameter count by role (`TransformerLM.param_roles()`, the partition the optimizer groups by),
    every role listed; asserts the counts sum to the model's numel."""
    from scratchlm.model.roles import ROLES

    params = dict(model.named_parameters())
    counts = dict.fromkeys(ROLES, 0)
    for name, role in model.param_roles().items():
        counts[role] += params[name].numel()
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters()), "roles must partition the params"
    return counts


def active_params(model: nn.Module) -> int:
    """Parameters used per token: all but the routed experts a token does not visit (top_k of E)."""
    groups = param_groups(model)
    moe = model.config.moe
    total = sum(groups.values())
    if moe.num_experts == 0:
        return total
    return total - groups["experts"] + groups["experts"] * moe.top_k // moe.num_experts


def meta_model(cfg: ModelConfig) -> nn.Module:
    """The model built on the meta device: shapes only, no memory, instant even for large configs."""
    from scratchlm.model.transformer import TransformerLM

    with torch.device("meta"):
        return TransformerLM(cfg)


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameter groups of `cfg`'s model plus "total", "active" (per token) and "matmul": the active
    parameters that multiply activations (no embedding tables; the head counted even when tied),
    which is the N of the C = 6 N D approximation."""
    model = meta_model(cfg)
    groups = param_groups(model)
    out = dict(groups)
    out["total"] = sum(groups.values())
    out["active"] = active_params(model)
    out["matmul"] = out["active"] - groups["embeddings"] + model.head.weight.numel() - groups["head"]
    return out


# ---------------------------------------------------------------------------------------------
# FLOPs


def causal_context(seq_len: int, window: int | None = None) -> float:
    """Mean number of keys a query attends to under a causal mask: token t (0-based) sees
    min(t + 1, window) keys, so (T + 1) / 2 for full attention."""
    T, w = seq_len, window or seq_len
    if w >= T:
        return (T + 1) / 2
    return (w * (w + 1) / 2 + (T - w) * w) / T


def _softmax_flops(cfg: ModelConfig, kind: str, T: int, causal: bool) -> dict[str, float]:
    D, H, K, Dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh
    ctx = causal_context(T, cfg.window if kind == "S" else None) if causal else T
    return {
        "qkv": 2 * D * (H + 2 * K) * Dh,
        "out": 2 * H * Dh * D,
        "scores": 2 * H * Dh * ctx,
        "values": 2 * H * Dh * ctx,
    }


def _mla_flops(cfg: ModelConfig, kind: str, T: int, causal: bool) -> dict[str, float]:
    """As `mla.py` (training form: K and V up-projected from the latent for every token)."""
    m, D, H = cfg.mla, cfg.d_model, cfg.n_heads
    Dr = m.rope_head_dim if cfg.positions == "rope" else 0
    Dn, Dv, R = m.nope_head_dim or cfg.dh, m.v_head_dim or cfg.dh, m.kv_lora_rank
    q = D * m.q_lora_rank + m.q_lora_rank * H * (Dn + Dr) if m.q_lora_rank else D * H * (Dn + Dr)
    ctx = causal_context(T) if causal else T
    return {
        "qkv": 2 * (q + D * (R + Dr) + R * H * (Dn + Dv)),
        "out": 2 * H * Dv * D,
        "scores": 2 * H * (Dn + Dr) * ctx,
        "values": 2 * H * Dv * ctx,
    }


def _linear_attention_flops(cfg: ModelConfig, kind: str, T: int, causal: bool) -> dict[str, float]:
    """As `linear_attention.py`'s chunked form, chunk C: per query head q k^T and A V inside the
    chunk (C keys computed, (C + 1) / 2 needed causally), phi(q) S and phi(q) z against the state of
    earlier chunks; per kv head phi(k)^T V once per token. T is padded to a multiple of C."""
    D, H, K, Dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh
    C = min(cfg.linear_chunk, T) if causal else cfg.linear_chunk
    pad = math.ceil(T / C) * C / T if not causal else 1.0  # the dense count includes the padded tokens
    ctx = (C + 1) / 2 if causal else C
    return {
        "qkv": 2 * D * (H + 2 * K) * Dh,
        "out": 2 * H * Dh * D,
        "scores": pad * 2 * H * Dh * (ctx + 1),
        "values": pad * 2 * H * Dh * (ctx + Dh),
        "state": pad * 2 * K * Dh * Dh,
    }


def _ssm_flops(cfg: ModelConfig, kind: str, T: int, causal: bool) -> dict[str, float]:
    """As `ssm.py` (S4D): in_proj D->D and out_proj D->2D are matmuls; the per-channel causal
    convolution is an FFT of length 2T: rfft of the input and irfft of the product (~2.5 n log2 n
    each, n = 2T) plus the complex pointwise product, per channel and sequence, i.e. about
    10 log2(2T) + 6 FLOPs per channel per token; the kernel (a complex (N/2 x T) Vandermonde
    contraction, 8 FLOPs per complex multiply-add) is built once per forward, counted here for batch
    1 (an upper bound per token). None of the SSM's FLOPs are matmuls FlopCounterMode sees as such."""
    D, N = cfg.d_model, cfg.ssm.state_dim
    fft = D * (10 * math.log2(2 * T) + 6 + 2)  # + 2: the D u skip connection
    kernel = 8 * D * (N // 2)
    return {"qkv": 2 * D * D, "out": 2 * D * 2 * D, "state": fft + kernel}


# (layer letter, attention kind) -> FLOPs of one mixer layer per token; mirrors mixers.MIXERS
MIXER_FLOPS = {
    ("L", "softmax"): _softmax_flops,
    ("S", "softmax"): _softmax_flops,
    ("L", "linear"): _linear_attention_flops,
    ("L", "mla"): _mla_flops,
    ("M", "softmax"): _ssm_flops,
    ("M", "linear"): _ssm_flops,
    ("M", "mla"): _ssm_flops,
}


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None, causal: bool = True) -> dict[str, float]:
    """Forward FLOPs per token (1 multiply-add = 2 FLOPs) of a length-`seq_len` sequence, by group
    (FLOP_GROUPS), plus "forward" (their sum), "backward" (2x forward: gradients with respect to
    both the inputs and the weights of every matmul), "train" (3x forward) and "6N" (the standard
    C = 6 N per token, N = count_params(cfg)["matmul"]; Kaplan et al. 2020 drop the attention
    score term it leaves out).

    `causal=True` counts the work causal attention needs (token t attends to min(t + 1, window)
    keys, (T + 1) / 2 on average for full attention); `causal=False` counts what a dense kernel
    computes, the full T x T score matrix masked afterwards (this is what `attn_backend="own"` and
    `torch.utils.flop_counter` count). Norms, activations, softmax and RoPE are not counted: they are
    O(D) per token against the O(D^2) matmuls.
    """
    T = seq_len or cfg.context_length
    D, V, L = cfg.d_model, cfg.vocab_size, cfg.n_layers
    out = dict.fromkeys(FLOP_GROUPS, 0.0)
    for layer in range(L):
        key = (cfg.layer_kind(layer), cfg.attention)
        for group, f in MIXER_FLOPS[key](cfg, key[0], T, causal).items():
            out[group] += f
    moe = cfg.moe
    per_expert = 2 * D * (moe.d_expert or cfg.ff_dim) * (3 if cfg.gated else 2)
    if moe.num_experts:
        out["experts"] = L * moe.top_k * per_expert
        out["shared_expert"] = L * per_expert if moe.shared_expert else 0.0
        out["router"] = L * 2 * D * moe.num_experts
    else:
        out["mlp"] = L * 2 * D * cfg.ff_dim * (3 if cfg.gated else 2)
    out["head"] = 2 * D * V
    forward = sum(out.values())
    out.update(forward=forward, backward=2 * forward, train=3 * forward)
    out["6N"] = 6 * count_params(cfg)["matmul"]
    return out


# ---------------------------------------------------------------------------------------------
# memory


def kv_cache_per_token(cfg: ModelConfig, dtype_bytes: int) -> dict[str, float]:
    """Generation-state bytes, summed over layers, by layer kind:

    - "full": softmax attention keys and values, 2 K Dh per token and layer, for every token;
    - "sliding": the same per token, but a sliding-window layer keeps at most `window` tokens;
    - "mla": the latent and shared RoPE key, kv_lora_rank + rope_head_dim per token and layer;
    - "state": bytes per *sequence*, constant in its length: linear attention's fp32 S and z,
      K (Dh^2 + Dh); the SSM's complex64 state, D N/2 x 8 bytes.
    """
    out = {"full": 0.0, "sliding": 0.0, "mla": 0.0, "state": 0.0}
    for layer in range(cfg.n_layers):
        kind = cfg.layer_kind(layer)
        if kind == "M":
            out["state"] += cfg.d_model * (cfg.ssm.state_dim // 2) * (16 if dtype_bytes == 8 else 8)
        elif cfg.attention == "linear":
            out["state"] += cfg.kv_heads * (cfg.dh**2 + cfg.dh) * 4
        elif cfg.attention == "mla":
            rope = cfg.mla.rope_head_dim if cfg.positions == "rope" else 0
            out["mla"] += (cfg.mla.kv_lora_rank + rope) * dtype_bytes
        else:
            out["sliding" if kind == "S" else "full"] += 2 * cfg.kv_heads * cfg.dh * dtype_bytes
    return out


def kv_cache_bytes(cfg: ModelConfig, batch: int, seq_len: int, dtype_bytes: int) -> float:
    """Bytes of generation state for `batch` sequences of `seq_len` tokens."""
    kv = kv_cache_per_token(cfg, dtype_bytes)
    per_seq = (kv["full"] + kv["mla"]) * seq_len + kv["sliding"] * min(seq_len, cfg.window or seq_len) + kv["state"]
    return batch * per_seq


def activation_bytes_per_token(cfg: ModelConfig, seq_len: int, dtype_bytes: int) -> dict[str, float]:
    """Bytes kept for the backward pass per token: {"layers": all blocks, "head": final norm +
    logits}. An estimate of the tensors autograd saves, assuming: no activation checkpointing, no
    dropout (each active dropout adds a 1-byte mask per element), activations in `dtype_bytes`
    except where the code computes in fp32 (logits for the loss, linear attention, the SSM), and
    each saved tensor counted once. Per layer, besides the branch inputs and norm outputs (4 D):

    - softmax attention: q, k, v and the output, (2H + 2K) Dh; a fused SDPA kernel keeps only a
      log-sum-exp per head (H, fp32) instead of the T x T probabilities, which the `own` backend
      keeps (scores and probabilities, 2 H T fp32 per token);
    - MLA: latent (R + Dr), q and k (2 H (Dn + Dr)), v and output (2 H Dv), plus the (T x T) as above;
    - linear attention: projections as softmax, plus fp32 phi(q), phi(k), v, the chunk's A (H C) and
      the state entering each chunk (K Dh^2 / C);
    - SSM: in_proj output in fp32 (D), FFT buffers (two complex length-2T spectra per channel,
      ~16 D bytes), the convolution output, GELU output, out_proj output (2D) and the gate (D);
    - dense MLP: up output and activation output (2F); gated: gate, act(gate), up, product (4F);
    - MoE: router logits and probabilities (2E fp32), per active expert the gathered input and
      gated output (2D) and its MLP activations, plus the shared expert's.

    Real usage is typically somewhat higher (fp32 norm intermediates, allocator fragmentation):
    treat this as the order of magnitude and for comparing configs.
    """
    b, D, H, K, Dh, L = dtype_bytes, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh, cfg.n_layers
    own_scores = 2 * H * seq_len * 4 if backend_name(cfg.attn_backend) == "naive" else H * 4
    ffn_elems = (4 if cfg.gated else 2) * (cfg.moe.d_expert or cfg.ff_dim)
    total = 0.0
    for layer in range(L):
        kind = cfg.layer_kind(layer)
        mix = 4 * D * b
        if kind == "M":
            mix += D * 4 + 16 * D + D * 4 + 2 * D * b + 2 * D * b + D * b
        elif cfg.attention == "linear":
            C = min(cfg.linear_chunk, seq_len)
            mix += (2 * H + 2 * K) * Dh * b + (H + 2 * K) * Dh * 4 + H * C * 4 + K * Dh * Dh * 4 / C
        elif cfg.attention == "mla":
            m = cfg.mla
            Dr = m.rope_head_dim if cfg.positions == "rope" else 0
            Dn, Dv = m.nope_head_dim or Dh, m.v_head_dim or Dh
            mix += (m.kv_lora_rank + Dr + 2 * H * (Dn + Dr) + 2 * H * Dv + m.q_lora_rank) * b + own_scores
        else:
            mix += (2 * H + 2 * K) * Dh * b + own_scores
        if cfg.moe.num_experts:
            moe = cfg.moe
            ffn = 2 * moe.num_experts * 4 + moe.top_k * (2 * D + ffn_elems) * b
            ffn += ffn_elems * b if moe.shared_expert else 0
        else:
            ffn = (4 if cfg.gated else 2) * cfg.ff_dim * b
        total += mix + ffn
    head = 2 * D * b + cfg.vocab_size * (b + 8)  # logits, their fp32 copy and exp for the loss
    return {"layers": total, "head": head}


def memory_estimate(
    cfg: ModelConfig, batch: int, seq_len: int, dtype_bytes: int, optimizer: str = "adamw"
) -> dict[str, float]:
    """Training memory in bytes: weights and grads in `dtype_bytes`; optimizer state (AdamW: two
    fp32 moments; SGD: one fp32 momentum; "none"), plus an fp32 master copy of the weights when
    training in 16-bit; activations for `batch` x `seq_len` tokens (`activation_bytes_per_token`);
    "train_total" their sum. Also the generation state: "kv_cache" for `batch` sequences of
    `seq_len` tokens and "kv_cache_per_token" (that divided by batch x seq_len)."""
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ScratchLMError(f"unknown optimizer {optimizer!r} for the memory estimate: expected adamw, sgd or none")
    if dtype_bytes not in (2, 4, 8):
        raise ScratchLMError(f"dtype_bytes must be 2 (bf16/fp16), 4 (fp32) or 8 (fp64), got {dtype_bytes}")
    n = count_params(cfg)["total"]
    master = 4 if dtype_bytes < 4 and optimizer != "none" else 0
    act = activation_bytes_per_token(cfg, seq_len, dtype_bytes)
    tokens = batch * seq_len
    out = {
        "weights": n * dtype_bytes,
        "grads": n * dtype_bytes if optimizer != "none" else 0,
        "optimizer": n * (OPTIMIZER_STATE_BYTES[optimizer] + master),
        "activations": tokens * (act["layers"] + act["head"]),
        "activations_per_layer": tokens * act["layers"] / cfg.n_layers,
    }
    out["train_total"] = out["weights"] + out["grads"] + out["optimizer"] + out["activations"]
    out["kv_cache"] = kv_cache_bytes(cfg, batch, seq_len, dtype_bytes)
    out["kv_cache_per_token"] = out["kv_cache"] / tokens
    return out
