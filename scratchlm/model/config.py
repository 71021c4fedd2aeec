"""ModelConfig: every architectural choice of the Transformer family as a typed switch.

Variant names are strings resolved once, at construction, by the builders in `norms.py`,
`positions.py`, `mlp.py` and `mixers.py`; `forward` never branches on the config. Presets live in
`configs/model/*.toml`. Shape legend used across `scratchlm/model`: B batch, T time, D model dim,
H heads, K kv heads, Dh head dim, V vocab, E experts, F feed-forward dim, N state dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchlm.errors import ScratchLMError

LAYER_KINDS = {
    "L": "attention over the whole context (long)",
    "S": "sliding-window attention (needs window > 0)",
    "M": "state-space sequence mixer instead of attention (see SSMConfig)",
}


@dataclass
class MoEConfig:
    num_experts: int = 0  # 0 = dense feed-forward; >= 1 = Mixture of Experts in every layer
    top_k: int = 2  # experts per token
    renormalize: bool = True  # gates sum to 1 over the chosen k (Mixtral); False keeps softmax probs (Switch)
    shared_expert: bool = False  # an always-on expert added to the routed output (DeepSeekMoE)
    d_expert: int = 0  # hidden size of each expert; 0 = the model's d_ff
    capacity_factor: float = 0.0  # 0 = dropless; c > 0: each expert takes <= c * tokens * top_k / E tokens
    aux_loss_coef: float = 0.01  # load-balancing loss (Switch Transformer, Fedus et al. 2021)
    z_loss_coef: float = 0.001  # router z-loss (ST-MoE, Zoph et al. 2022)


@dataclass
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2, 2024): K and V come from one low-rank latent."""

    kv_lora_rank: int = 64  # latent size: the KV cache stores this (+ rope_head_dim) per token
    q_lora_rank: int = 0  # 0 = full-rank query projection
    rope_head_dim: int = 16  # decoupled RoPE part of q/k per head (k's part shared by heads)
    nope_head_dim: int = 0  # position-free part of q/k per head; 0 = head_dim
    v_head_dim: int = 0  # 0 = head_dim


@dataclass
class SSMConfig:
    """Diagonal state-space mixer, S4D (Gu, Gupta, Goel, Re 2022: 'On the Parameterization and
    Initialization of Diagonal State Space Models')."""

    state_dim: int = 32  # N: complex diagonal state per channel (N/2 conjugate pairs)
    dt_min: float = 1e-3  # range of the learned discretisation step, log-uniform init
    dt_max: float = 1e-1


@dataclass
class ModelConfig:
    vocab_size: int = 10_000
    context_length: int = 256  # longest sequence; sizes learned positions and the RoPE table
    d_model: int = 512
    n_layers: int = 4
    n_heads: int = 16
    n_kv_heads: int = 0  # 0 = n_heads (multi-head); 1 = multi-query; else grouped-query
    head_dim: int = 0  # 0 = d_model // n_heads
    d_ff: int = 0  # 0 = 4 * d_model (dense) or 8/3 * d_model rounded up to a multiple of 64 (gated)
    # GELU is exact (erf); "gelu_tanh" / "geglu_tanh" use its tanh approximation (GPT-2; Gemma's gelu_pytorch_tanh)
    mlp: Literal["relu", "gelu", "gelu_tanh", "relu2", "swiglu", "geglu", "geglu_tanh"] = "swiglu"
    # "rmsnorm_fused": the same RMSNorm, forward + backward through scratchlm.kernels.rms_norm (Triton on CUDA)
    norm: Literal["rmsnorm", "layernorm", "rmsnorm_fused"] = "rmsnorm"
    # pre: x + f(norm(x)); post: norm(x + f(x)); sandwich: x + norm(f(norm(x))) (Ding et al. 2021; Gemma 2/3)
    norm_placement: Literal["pre", "post", "sandwich"] = "pre"
    norm_eps: float = 1e-5
    qk_norm: bool = False  # normalise q and k per head before the dot product (same norm type)
    positions: Literal["rope", "learned", "sinusoidal", "none"] = "rope"
    rope_theta: float = 10_000.0
    rope_local_theta: float = 0.0  # RoPE base of sliding-window (S) layers; 0 = rope_theta (Gemma 3: 1e4 S, 1e6 L)
    attn_scale_dim: int = 0  # softmax attention scores are scaled by attn_scale_dim**-0.5; 0 = head dim (Gemma's
    # query_pre_attn_scalar)
    scale_embeddings: bool = False  # token embeddings * sqrt(d_model), the factor rounded to their dtype (Gemma)
    attention: Literal["softmax", "linear", "mla"] = "softmax"  # kind used by L and S layers
    layer_pattern: str = "L"  # one letter per layer, repeated: L, S or M (see LAYER_KINDS)
    window: int = 0  # sliding-window size for S layers (a token sees itself and window-1 before it)
    linear_feature_map: Literal["elu", "relu"] = "elu"  # phi of linear attention: elu(x)+1 (Katharopoulos 2020)
    linear_chunk: int = 64  # chunk length of the O(T) chunked linear-attention form
    # Softmax attention's inner product, one vocabulary with `scratchlm.kernels.attention`: "sdpa" (torch's fused
    # F.scaled_dot_product_attention), "naive" (the full T x S score matrix in the project's own code; "own" is its
    # old name, still accepted), "auto" (FlashAttention-2 Triton kernels on CUDA, else SDPA), "triton", "reference"
    # (tiled PyTorch FlashAttention-2, O(T) memory). Resolved once into the model's `attend` callable
    # (`scratchlm.model.attend`). The FlashAttention backends cover unmasked causal attention; masked calls
    # (sliding window, KV cache, padding) and attention dropout ("auto" only) go through SDPA.
    attn_backend: Literal["sdpa", "naive", "own", "auto", "triton", "reference"] = "sdpa"
    # Norms, activations: "torch" = torch's fused kernels (F.rms_norm, F.layer_norm, F.gelu, ...), "own" = the
    # project's elementwise primitives (`primitives.py`, `norms.py`), the readable reference they are tested against.
    ops: Literal["torch", "own"] = "torch"
    fused_swiglu: bool = False  # silu(gate) * up as one kernel (scratchlm.kernels.swiglu); needs mlp="swiglu", no MoE
    fused_loss: bool = False  # training loss (build_loss): chunked head + cross-entropy, no (tokens x V) logits
    bias: bool = False  # biases in every linear layer and LayerNorm (GPT-2)
    qkv_bias: bool = False  # biases in the q/k/v projections only (Qwen2)
    tie_embeddings: bool = True  # output head shares the token embedding matrix
    final_norm: bool = True  # norm before the output head
    dropout_embd: float = 0.0
    dropout_attn: float = 0.0
    dropout_resid: float = 0.0
    init_std: float = 0.02  # see TransformerLM.init_weights
    moe: MoEConfig = field(default_factory=MoEConfig)
    mla: MLAConfig = field(default_factory=MLAConfig)
    ssm: SSMConfig = field(default_factory=SSMConfig)

    # ------------------------------------------------------------------ derived values
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dh(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def gated(self) -> bool:
        return self.mlp in ("swiglu", "geglu", "geglu_tanh")

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.gated:  # same parameter count as a 4x dense MLP (Shazeer 2020), rounded for matmul shapes
            return -(-(8 * self.d_model // 3) // 64) * 64
        return 4 * self.d_model

    def layer_kind(self, layer: int) -> str:
        return self.layer_pattern[layer % len(self.layer_pattern)]

    @property
    def local_rope(self) -> bool:
        """Whether sliding-window layers rotate q/k with their own RoPE base (`rope_local_theta`)."""
        return bool(self.rope_local_theta) and any(self.layer_kind(i) == "S" for i in range(self.n_layers))

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ScratchLMError(f"invalid model config: {msg}")

        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.head_dim and self.d_model % self.n_heads:
            bad(f"n_heads={self.n_heads} does not divide d_model={self.d_model} (or set head_dim)")
        if self.n_kv_heads < 0 or self.n_heads % self.kv_heads:
            bad(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if not self.layer_pattern or set(self.layer_pattern) - set(LAYER_KINDS):
            bad(f"layer_pattern {self.layer_pattern!r} may only use the letters {', '.join(LAYER_KINDS)}")
        kinds = {self.layer_kind(i) for i in range(self.n_layers)}
        if "S" in kinds and self.window < 1:
            bad(f"layer_pattern {self.layer_pattern!r} has sliding-window layers but window={self.window} (< 1)")
        if self.window < 0:
            bad(f"window must be >= 0, got {self.window}")
        if "S" in kinds and self.attention != "softmax":
            bad(f"sliding-window layers need attention='softmax', not {self.attention!r}")
        if self.rope_local_theta < 0 or (self.rope_local_theta and self.positions != "rope"):
            bad(f"rope_local_theta={self.rope_local_theta} needs positions='rope' and must be >= 0 (0 = rope_theta)")
        if self.attn_scale_dim < 0 or (self.attn_scale_dim and self.attention != "softmax"):
            bad(f"attn_scale_dim={self.attn_scale_dim} needs attention='softmax' and must be >= 0 (0 = head dim)")
        if self.positions == "rope" and self.dh % 2:
            bad(f"RoPE needs an even head dim, got {self.dh}")
        if self.attention == "mla":
            if self.positions in ("learned", "sinusoidal"):
                bad("MLA uses decoupled RoPE inside attention; use positions='rope' or 'none'")
            if self.mla.kv_lora_rank < 1 or self.mla.rope_head_dim % 2:
                bad("MLA needs kv_lora_rank >= 1 and an even rope_head_dim")
            if self.qk_norm:
                bad("qk_norm is not supported with MLA (its latent is normalised instead)")
        if self.attention == "linear" and self.qk_norm:
            bad("qk_norm is not supported with linear attention")
        if self.linear_chunk < 1:
            bad(f"linear_chunk must be >= 1, got {self.linear_chunk}")
        if self.ops not in ("torch", "own"):
            bad(f"ops must be 'torch' or 'own', got {self.ops!r}")
        kernel_attn = self.attn_backend not in ("sdpa", "own", "naive")
        if kernel_attn and self.attention == "mla":
            bad(f"attn_backend={self.attn_backend!r} is for softmax attention; MLA takes 'sdpa' or 'naive'")
        if kernel_attn and self.attn_backend != "auto" and self.dropout_attn > 0:
            bad(f"attn_backend={self.attn_backend!r} has no attention dropout; use 'auto' or 'sdpa' with dropout_attn")
        if self.fused_swiglu and (self.mlp != "swiglu" or self.moe.num_experts):
            bad("fused_swiglu needs mlp='swiglu' and a dense MLP (MoE experts are not fused)")
        moe = self.moe
        if moe.num_experts < 0 or (moe.num_experts and not 1 <= moe.top_k <= moe.num_experts):
            bad(f"MoE top_k={moe.top_k} must be between 1 and num_experts={moe.num_experts}")
        if moe.capacity_factor < 0:
            bad(f"moe.capacity_factor must be >= 0 (0 = dropless), got {moe.capacity_factor}")
        for name in ("dropout_embd", "dropout_attn", "dropout_resid"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.ssm.state_dim < 2 or self.ssm.state_dim % 2:
            bad(f"ssm.state_dim must be an even number >= 2, got {self.ssm.state_dim}")
        if not 0 < self.ssm.dt_min <= self.ssm.dt_max:
            bad("ssm needs 0 < dt_min <= dt_max")
