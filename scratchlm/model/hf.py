"""Hugging Face interop: load GPT-2 / Llama / Mistral / Qwen2 / Gemma 3 (text) checkpoints into a
TransformerLM and save a TransformerLM in a form `transformers.AutoModelForCausalLM.from_pretrained` reads.

    model = load_hf("path/to/hf_model")          # config.json + model.safetensors (or sharded)
    save_hf(model, "out_dir")                    # picks gpt2 / llama / mistral / qwen2 / gemma3_text

Needs only `safetensors` (not `transformers`). Both directions are name maps plus three layout
facts: GPT-2's Conv1D stores weights as (in, out), so they are transposed; GPT-2's c_attn is q, k
and v fused along the output dim; a tied output head is not stored. RoPE needs no permutation:
scratchlm rotates the halves (i, i + Dh/2) of each head like HF Llama. Reading accepts both config
layouts: transformers 5.x keeps `rope_theta` inside `rope_parameters`, 4.x at the top level with a
`rope_scaling` dict; writing emits both. Only the default (unscaled) RoPE is implemented.

A bias that one side has and the other lacks is zero: loading a Llama with attention_bias (q, k, v,
o biases) gives scratchlm's `bias=True` model with zero MLP/norm biases; saving a bias-free model as
GPT-2 or Qwen2 writes zero biases. Saving refuses a non-zero bias the target format cannot hold.

Gemma 3 (model_type gemma3_text; "gemma3", the GGUF name, is an alias, and a multimodal config's
`text_config` is read) is the Llama layout plus switches of ModelConfig: norm_placement="sandwich"
(Gemma's input/post_attention/pre_feedforward/post_feedforward norms are exactly x + norm(f(norm(x)))),
qk_norm, mlp="geglu_tanh" (gelu_pytorch_tanh), scale_embeddings (x sqrt(D), rounded to the embedding
dtype as Gemma does), attn_scale_dim (query_pre_attn_scalar), rope_local_theta (the sliding layers'
RoPE base; 5.x nests both bases in `rope_parameters` per layer type, 4.x writes rope_theta and
rope_local_base_freq: both are read, both written). The sliding window means the same on both sides:
a token sees itself and window-1 tokens before it (transformers' kv_idx > q_idx - sliding_window).
Gemma's RMSNorm multiplies by (1 + w) in fp32; scratchlm's by w. The +1 is folded into the weights
(w + 1 on import, w - 1 on export, both in fp32) rather than added as a norm switch: the model code,
every norm backend (own, torch, the fused Triton kernel) and the parallel plans stay as they are, and
in fp32 the result is bit-for-bit Gemma's (1 + w.float() is the same fp32 sum). The price: a model
cast to bf16 holds the gain 1 + w rounded to bf16 where Gemma rounds w, a relative error <= 2^-9 on
the gain, the size of the rounding Gemma applies to the norm's output anyway. Soft-capping (None in
Gemma 3), bidirectional attention, attention biases and RoPE scaling are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_dir, read_json, write_json
from scratchlm.model.config import ModelConfig

LLAMA_FAMILY = ("llama", "mistral", "qwen2")
GEMMA3 = "gemma3_text"
MODEL_TYPES = ("gpt2", *LLAMA_FAMILY, GEMMA3)
ALIASES = {"gemma3": GEMMA3}  # GGUF's architecture name; a multimodal config.json's (text in `text_config`)
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    GEMMA3: "Gemma3ForCausalLM",
}
# transformers' defaults for keys a config.json may omit (they differ between model types)
DEFAULT_CONTEXT = {"llama": 2048, "mistral": 131_072, "qwen2": 32_768}
DEFAULT_WINDOW = 4096  # MistralConfig / Qwen2Config sliding_window
# HF activation name <-> scratchlm mlp: GPT-2 MLPs are dense, the Llama family's gated (act(gate) * up)
GPT2_ACTS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "relu2": "relu2",
}
GATED_ACTS = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_pytorch_tanh": "geglu_tanh"}
LAYER_TYPES = {"full_attention": "L", "sliding_attention": "S"}
# Gemma's RMSNorm scales by (1 + w): the offset folded into our gains on import, taken out on export
NORM_OFFSET = {GEMMA3: 1.0}
# tensors of some checkpoints that are buffers, not weights (old GPT-2 causal masks, old Llama RoPE tables)
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


# ---------------------------------------------------------------------------------------- config.json -> ModelConfig
def _get(hf: dict, key: str):
    if key not in hf:
        raise ScratchLMError(f"config.json ({hf.get('model_type')}) has no {key!r}")
    return hf[key]


def _rope_theta(hf: dict) -> float:
    """rope_theta from `rope_parameters` (transformers 5.x) or the top level (4.x); refuses scaling."""
    key, params = "rope_parameters", hf.get("rope_parameters")
    if params is None:
        key, params = "rope_scaling", hf.get("rope_scaling") or {}
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        raise ScratchLMError(f"config.json {key}={params!r}: per-layer-type RoPE parameters are not supported")
    return _default_rope_theta(hf, key, params, hf.get("rope_theta", 10_000.0))


def _default_rope_theta(hf: dict, key: str, params: dict, theta: float) -> float:
    """The base of one RoPE parameter dict (`theta` where it names none); refuses scaling and partial RoPE."""
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ScratchLMError(
            f"config.json {key}.rope_type={kind!r}: RoPE scaling is not implemented in scratchlm (only 'default')"
        )
    if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise ScratchLMError("config.json partial_rotary_factor != 1: partial RoPE is not supported")
    return float(params.get("rope_theta", theta))


def _gpt2_config(hf: dict) -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in GPT2_ACTS:
        raise ScratchLMError(f"config.json activation_function={act!r} is not supported ({', '.join(GPT2_ACTS)})")
    for key, unsupported in (
        ("add_cross_attention", True),
        ("scale_attn_weights", False),
        ("scale_attn_by_inverse_layer_idx", True),
    ):
        if hf.get(key, not unsupported) == unsupported:
            raise ScratchLMError(f"config.json {key}={unsupported} is not supported by scratchlm's GPT-2 mapping")
    d = _get(hf, "n_embd")
    return ModelConfig(
        vocab_size=_get(hf, "vocab_size"),
        context_length=hf.get("n_positions", hf.get("n_ctx", 1024)),
        d_model=d,
        n_layers=_get(hf, "n_layer"),
        n_heads=_get(hf, "n_head"),
        d_ff=hf.get("n_inner") or 4 * d,
        mlp=GPT2_ACTS[act],
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        positions="learned",
        bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        dropout_embd=hf.get("embd_pdrop", 0.0),
        dropout_attn=hf.get("attn_pdrop", 0.0),
        dropout_resid=hf.get("resid_pdrop", 0.0),
        init_std=hf.get("initializer_range", 0.02),
    )


def _layer_pattern(hf: dict, model_type: str, n_layers: int, context: int) -> tuple[str, int]:
    """(layer_pattern, window) from Mistral's `sliding_window` or Qwen2's use_sliding_window /
    max_window_layers / layer_types. A window as long as the context never binds: full attention."""
    if model_type == "llama":
        return "L", 0
    window = hf.get("sliding_window", DEFAULT_WINDOW)
    if model_type == "mistral":
        types = ["sliding_attention" if window is not None else "full_attention"] * n_layers
    else:  # qwen2: as Qwen2Config, layers >= max_window_layers slide, unless layer_types says otherwise
        if not hf.get("use_sliding_window", False):
            window = None
        first = hf.get("max_window_layers", 28)
        auto = ["sliding_attention" if window is not None and i >= first else "full_attention" for i in range(n_layers)]
        types = hf.get("layer_types") or auto
    if len(types) != n_layers or set(types) - set(LAYER_TYPES):
        raise ScratchLMError(f"config.json layer_types={types!r}: expected {n_layers} of {', '.join(LAYER_TYPES)}")
    if "sliding_attention" in types and window is None:
        raise ScratchLMError("config.json layer_types has sliding_attention layers but no sliding window is set")
    if window is None or window >= context or "sliding_attention" not in types:
        return "L", 0
    pattern = "".join(LAYER_TYPES[t] for t in types)
    return (pattern[0] if len(set(pattern)) == 1 else pattern), int(window)


def _llama_family_config(hf: dict, model_type: str) -> ModelConfig:
    act = hf.get("hidden_act", "silu")
    if act not in GATED_ACTS:
        raise ScratchLMError(f"config.json hidden_act={act!r} is not supported ({', '.join(GATED_ACTS)})")
    d, heads, n_layers = _get(hf, "hidden_size"), _get(hf, "num_attention_heads"), _get(hf, "num_hidden_layers")
    context = hf.get("max_position_embeddings", DEFAULT_CONTEXT[model_type])
    pattern, window = _layer_pattern(hf, model_type, n_layers, context)
    # Llama's attention_bias covers q, k, v and o; mlp_bias the MLP: both are scratchlm's `bias`.
    # Qwen2 always has q/k/v biases and nothing else.
    llama_bias = model_type == "llama" and bool(hf.get("attention_bias", False) or hf.get("mlp_bias", False))
    return ModelConfig(
        vocab_size=_get(hf, "vocab_size"),
        context_length=context,
        d_model=d,
        n_layers=n_layers,
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or d // heads,
        d_ff=_get(hf, "intermediate_size"),
        mlp=GATED_ACTS[act],
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        positions="rope",
        rope_theta=_rope_theta(hf),
        layer_pattern=pattern,
        window=window,
        bias=llama_bias,
        qkv_bias=model_type == "qwen2",
        tie_embeddings=hf.get("tie_word_embeddings", False),
        dropout_attn=hf.get("attention_dropout", 0.0),
        init_std=hf.get("initializer_range", 0.02),
    )


def _gemma3_rope(hf: dict) -> tuple[float, float]:
    """(global, local) RoPE bases of Gemma 3: transformers 5.x writes `rope_parameters` with one dict per
    layer type; 4.x `rope_theta` (+ `rope_scaling`) for full attention and `rope_local_base_freq`."""
    params = hf.get("rope_parameters")
    if params is None:
        full, local = ("rope_scaling", hf.get("rope_scaling") or {}), ("rope_local_base_freq", {})
    elif isinstance(params, dict) and set(params) & set(LAYER_TYPES):
        key = "rope_parameters."
        full = (key + "full_attention", params.get("full_attention") or {})
        local = (key + "sliding_attention", params.get("sliding_attention") or {})
    else:
        raise ScratchLMError(
            f"config.json rope_parameters={params!r}: gemma3_text expects one dict per layer type "
            "(full_attention, sliding_attention)"
        )
    return (
        _default_rope_theta(hf, *full, hf.get("rope_theta", 1_000_000.0)),
        _default_rope_theta(hf, *local, hf.get("rope_local_base_freq", 10_000.0)),
    )


def _gemma3_layers(hf: dict, n_layers: int) -> tuple[str, int]:
    """(layer_pattern, window) from `layer_types`, or from `sliding_window_pattern` (every n-th layer global,
    6 by default, as Gemma3TextConfig). The pattern is the shortest period that repeats to the layer types.
    Sliding layers stay sliding even with a window >= the context: their RoPE base differs."""
    types = hf.get("layer_types")
    if not types:
        every = hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6))
        if not isinstance(every, int) or every < 1:
            raise ScratchLMError(f"config.json sliding_window_pattern={every!r}: expected an integer >= 1")
        types = ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n_layers)]
    unknown = sorted(set(types) - set(LAYER_TYPES))
    if unknown or len(types) != n_layers:
        why = f"unknown layer type {unknown[0]!r}" if unknown else f"{len(types)} entries for {n_layers} layers"
        raise ScratchLMError(f"config.json layer_types: {why} (expected {n_layers} of {', '.join(LAYER_TYPES)})")
    letters = "".join(LAYER_TYPES[t] for t in types)
    period = next(p for p in range(1, n_layers + 1) if all(c == letters[i % p] for i, c in enumerate(letters)))
    window = hf.get("sliding_window", 4096)
    if "S" not in letters:
        return letters[:period], 0
    if window is None or window < 1:
        raise ScratchLMError(f"config.json has sliding_attention layers but sliding_window={window!r}")
    return letters[:period], int(window)


def _gemma3_config(hf: dict) -> ModelConfig:
    """Gemma 3 text (Gemma3TextConfig; its defaults where config.json omits a key)."""
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if hf.get(key) is not None:
            raise ScratchLMError(f"config.json {key}={hf[key]!r}: soft-capping is not supported (Gemma 3 sets None)")
    for key in ("use_bidirectional_attention", "attention_bias"):
        if hf.get(key):
            raise ScratchLMError(f"config.json {key}=true is not supported by scratchlm's gemma3_text mapping")
    act = hf.get("hidden_activation", hf.get("hidden_act", "gelu_pytorch_tanh"))
    if act not in GATED_ACTS:
        raise ScratchLMError(f"config.json hidden_activation={act!r} is not supported ({', '.join(GATED_ACTS)})")
    n_layers = _get(hf, "num_hidden_layers")
    pattern, window = _gemma3_layers(hf, n_layers)
    rope_theta, rope_local_theta = _gemma3_rope(hf)
    heads = _get(hf, "num_attention_heads")
    return ModelConfig(
        vocab_size=_get(hf, "vocab_size"),
        context_length=hf.get("max_position_embeddings", 131_072),
        d_model=_get(hf, "hidden_size"),
        n_layers=n_layers,
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim", 256),
        d_ff=_get(hf, "intermediate_size"),
        mlp=GATED_ACTS[act],
        norm="rmsnorm",
        norm_placement="sandwich",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        qk_norm=True,
        positions="rope",
        rope_theta=rope_theta,
        rope_local_theta=rope_local_theta,
        attn_scale_dim=int(hf.get("query_pre_attn_scalar", 256)),
        scale_embeddings=True,
        layer_pattern=pattern,
        window=window,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        dropout_attn=hf.get("attention_dropout") or 0.0,
        init_std=hf.get("initializer_range", 0.02),
    )


def _canonical(hf: dict) -> dict:
    """`hf` with an alias model_type resolved; a multimodal Gemma 3 config gives its `text_config`
    (tie_word_embeddings, which Gemma3Config keeps at the top level, carried over)."""
    model_type = hf.get("model_type")
    if model_type not in ALIASES:
        return hf
    if isinstance(hf.get("text_config"), dict):
        tie = {"tie_word_embeddings": hf["tie_word_embeddings"]} if "tie_word_embeddings" in hf else {}
        return {**hf["text_config"], **tie, "model_type": ALIASES[model_type]}
    return {**hf, "model_type": ALIASES[model_type]}


def config_from_hf(hf: dict) -> ModelConfig:
    """The ModelConfig equivalent to a Hugging Face config.json dict."""
    hf = _canonical(hf)
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        expected = ", ".join([*MODEL_TYPES, *ALIASES])
        raise ScratchLMError(f"config.json model_type={model_type!r} is not supported: expected {expected}")
    if model_type == "gpt2":
        cfg = _gpt2_config(hf)
    elif model_type == GEMMA3:
        cfg = _gemma3_config(hf)
    else:
        cfg = _llama_family_config(hf, model_type)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------- tensor names
def _gpt2_names(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(scratchlm name, HF name) pairs of the 1:1 tensors; c_attn (fused q/k/v) is handled apart."""
    pairs = [("embed.weight", "wte.weight"), ("pos_embed.weight", "wpe.weight")]
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}.", f"h.{i}."
        for kind in ("weight", "bias"):
            pairs += [
                (f"{b}attn.norm_in.{kind}", f"{h}ln_1.{kind}"),
                (f"{b}attn.f.o_proj.{kind}", f"{h}attn.c_proj.{kind}"),
                (f"{b}ffn.norm_in.{kind}", f"{h}ln_2.{kind}"),
                (f"{b}ffn.f.up.{kind}", f"{h}mlp.c_fc.{kind}"),
                (f"{b}ffn.f.down.{kind}", f"{h}mlp.c_proj.{kind}"),
            ]
    return pairs + [("norm.weight", "ln_f.weight"), ("norm.bias", "ln_f.bias")]


# Block norms of the Llama layout by norm placement: Llama's post_attention_layernorm is the norm before
# the MLP; Gemma's the norm after attention (sandwich).
LLAMA_NORMS = {
    "pre": {"attn.norm_in": "input_layernorm", "ffn.norm_in": "post_attention_layernorm"},
    "sandwich": {
        "attn.norm_in": "input_layernorm",
        "attn.norm_mid": "post_attention_layernorm",
        "ffn.norm_in": "pre_feedforward_layernorm",
        "ffn.norm_mid": "post_feedforward_layernorm",
    },
}


def _llama_names(cfg: ModelConfig) -> list[tuple[str, str]]:
    """Llama-family (and Gemma 3) pairs; the norms follow the config's placement and QK-norm."""
    pairs = [("embed.weight", "embed_tokens.weight")]
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}.", f"layers.{i}."
        pairs += [
            (f"{b}{ours}.weight", f"{h}{theirs}.weight") for ours, theirs in LLAMA_NORMS[cfg.norm_placement].items()
        ]
        if cfg.qk_norm:
            pairs += [(f"{b}attn.f.{p}_norm.weight", f"{h}self_attn.{p}_norm.weight") for p in "qk"]
        for kind in ("weight", "bias"):
            pairs += [(f"{b}attn.f.{p}_proj.{kind}", f"{h}self_attn.{p}_proj.{kind}") for p in "qkvo"]
            pairs += [(f"{b}ffn.f.{p}.{kind}", f"{h}mlp.{p}_proj.{kind}") for p in ("gate", "up", "down")]
    return pairs + [("norm.weight", "norm.weight")]


def _is_conv1d(hf_name: str) -> bool:
    """GPT-2's Conv1D weights are stored (in, out), the transpose of a Linear's (out, in)."""
    return hf_name.endswith(("c_proj.weight", "c_fc.weight", "c_attn.weight"))


def _has_bias(hf_name: str, model_type: str, attention_bias: bool = False, mlp_bias: bool = False) -> bool:
    """Whether the HF architecture has the bias `hf_name` (Llama: per its attention_bias / mlp_bias)."""
    if model_type == "gpt2":
        return True
    if model_type == "qwen2":
        return hf_name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))
    if model_type == "llama":
        return attention_bias if ".self_attn." in hf_name else mlp_bias
    return False  # mistral, gemma3_text


# ---------------------------------------------------------------------------------------- load
class _Checkpoint:
    """The tensors of `model.safetensors`, or of the shards named by `model.safetensors.index.json`,
    read on demand, or of an in-memory dict (`tensors`: a GGUF import); remembers which were used so
    leftovers can be reported."""

    def __init__(self, path: Path | str, prefix: str, tensors: dict[str, Tensor] | None = None):
        self.path = path
        if tensors is not None:
            self.where, self.files, self._tensors = dict.fromkeys(tensors, None), {}, tensors
        else:
            self._tensors = None
            self._open(Path(path))
        self.prefix = prefix if any(name.startswith(prefix) for name in self.where) else ""
        self.used: set[str] = set()

    def _open(self, path: Path) -> None:
        from safetensors import safe_open

        single, index = path / "model.safetensors", path / "model.safetensors.index.json"
        if single.is_file():
            files = [single]
            with safe_open(single, "pt") as f:
                self.where = dict.fromkeys(f.keys(), single)
        elif index.is_file():
            weight_map = read_json(index, "safetensors index").get("weight_map")
            if not isinstance(weight_map, dict):
                raise ScratchLMError(f"{index} has no 'weight_map'")
            self.where = {name: path / file for name, file in weight_map.items()}
            files = sorted(set(self.where.values()))
            for file in files:
                if not file.is_file():
                    raise ScratchLMError(f"shard {file} named by {index} not found")
        else:
            other = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pth")]
            hint = f" (found {', '.join(other)}: only safetensors checkpoints are supported)" if other else ""
            raise ScratchLMError(f"no model.safetensors or model.safetensors.index.json in {path}{hint}")
        self.files = {file: safe_open(file, "pt") for file in files}

    def key(self, name: str) -> str:
        return name if name == "lm_head.weight" else self.prefix + name

    def __contains__(self, name: str) -> bool:
        return self.key(name) in self.where

    def take(self, name: str) -> Tensor:
        key = self.key(name)
        if key not in self.where:
            raise ScratchLMError(f"checkpoint {self.path} has no tensor {key!r}")
        self.used.add(key)
        if self._tensors is not None:
            return self._tensors[key]
        try:
            return self.files[self.where[key]].get_tensor(key)
        except Exception as e:  # an index naming a tensor its shard lacks, a truncated file
            raise ScratchLMError(f"cannot read tensor {key!r} from {self.where[key]}: {e}") from None

    def leftovers(self) -> list[str]:
        return sorted(k for k in self.where if k not in self.used and not k.endswith(IGNORED_SUFFIXES))


def _read_state(cfg: ModelConfig, hf: dict, ck: _Checkpoint, wanted: dict[str, Tensor]) -> dict[str, Tensor]:
    """scratchlm state dict from the checkpoint. `wanted`: the new model's own state dict (names, shapes)."""
    model_type = hf["model_type"]
    flags = dict(attention_bias=hf.get("attention_bias", False), mlp_bias=hf.get("mlp_bias", False))
    sd: dict[str, Tensor] = {}
    if model_type == "gpt2":
        pairs = _gpt2_names(cfg)
        for i in range(cfg.n_layers):
            w, b = ck.take(f"h.{i}.attn.c_attn.weight"), ck.take(f"h.{i}.attn.c_attn.bias")  # (D, 3D), (3D,)
            for p, wp, bp in zip("qkv", w.t().chunk(3, dim=0), b.chunk(3)):  # (D, D) each, as Linear
                sd[f"blocks.{i}.attn.f.{p}_proj.weight"], sd[f"blocks.{i}.attn.f.{p}_proj.bias"] = wp, bp
    else:
        pairs = _llama_names(cfg)
    offset = NORM_OFFSET.get(model_type, 0.0)
    for ours, theirs in pairs:
        if ours in wanted and (not theirs.endswith(".bias") or _has_bias(theirs, model_type, **flags)):
            t = ck.take(theirs)
            if offset and theirs.endswith("norm.weight"):
                t = t.float() + offset  # fp32, as Gemma's 1.0 + weight.float()
            sd[ours] = t.t() if _is_conv1d(theirs) else t
    if cfg.tie_embeddings:
        sd["head.weight"] = sd["embed.weight"]
        ck.used.add("lm_head.weight")  # HF ties it too, should the checkpoint store a copy
    else:
        sd["head.weight"] = ck.take("lm_head.weight")
    for name in sorted(set(wanted) - set(sd)):
        if not name.endswith(".bias"):  # a mapping bug, not a user error
            raise AssertionError(f"no checkpoint tensor is mapped to {name}")
        # a bias the HF architecture does not have (Llama's norms)
        sd[name] = torch.zeros(wanted[name].shape, dtype=wanted[name].dtype)
    for name, t in sd.items():
        if t.shape != wanted[name].shape:
            raise ScratchLMError(
                f"checkpoint {ck.path}: the tensor for {name} has shape {tuple(t.shape)}, "
                f"config.json implies {tuple(wanted[name].shape)}"
            )
    return sd


def load_hf(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """A TransformerLM with the weights of a Hugging Face checkpoint directory (config.json +
    model.safetensors or a sharded index) of model_type gpt2, llama, mistral, qwen2 or gemma3_text."""
    path = Path(path)
    if not path.is_dir():
        raise ScratchLMError(f"Hugging Face model directory not found: {path}")
    hf = read_json(path / "config.json", "Hugging Face config.json")
    if isinstance(hf.get("text_config"), dict):
        raise ScratchLMError(
            f"{path} is a multimodal checkpoint (model_type={hf.get('model_type')!r} with a text_config): loading its "
            "language model beside the vision tower is not supported; use a text-only (gemma3_text) checkpoint"
        )
    hf = _canonical(hf)
    return _load(hf, _Checkpoint(path, _prefix(hf)), dtype)


def model_from_hf(hf: dict, tensors: dict[str, Tensor], source: str, dtype: torch.dtype = torch.float32):
    """A TransformerLM from a config.json dict and tensors under their Hugging Face names (as
    `model.safetensors` would hold them), e.g. a GGUF file converted in memory. `source` names them in errors.
    Norm gains are taken as Hugging Face stores them (Gemma: w of 1 + w, which this adds the 1 to)."""
    hf = _canonical(hf)
    return _load(hf, _Checkpoint(source, _prefix(hf), tensors), dtype)


def _prefix(hf: dict) -> str:
    return "transformer." if hf.get("model_type") == "gpt2" else "model."


def _load(hf: dict, ck: _Checkpoint, dtype: torch.dtype):
    from scratchlm.model.transformer import TransformerLM

    cfg = config_from_hf(hf)
    with torch.device("meta"):  # names and shapes only: the weights come from the checkpoint
        wanted = TransformerLM(cfg).state_dict()
    sd = _read_state(cfg, hf, ck, wanted)
    leftovers = ck.leftovers()
    if leftovers:
        shown = ", ".join(leftovers[:8]) + (f" and {len(leftovers) - 8} more" if len(leftovers) > 8 else "")
        raise ScratchLMError(f"checkpoint {ck.path} has tensors the {hf['model_type']} mapping does not use: {shown}")
    return TransformerLM.from_state_dict(cfg, sd).to(dtype)


# ---------------------------------------------------------------------------------------- save
def _problems(cfg: ModelConfig, model_type: str) -> list[str]:
    """Why `model_type` cannot represent `cfg` (empty: it can)."""
    kinds = {cfg.layer_kind(i) for i in range(cfg.n_layers)}
    why = []
    if cfg.moe.num_experts:
        why.append("Mixture of Experts")
    if cfg.attention != "softmax":
        why.append(f"attention={cfg.attention!r}")
    if "M" in kinds:
        why.append("state-space (M) layers")
    if not cfg.final_norm:
        why.append("final_norm=False")
    if model_type == GEMMA3:  # what Gemma always has
        if cfg.norm_placement != "sandwich":
            why.append(f"norm_placement={cfg.norm_placement!r} (needs 'sandwich')")
        why += [f"{k}=False (needs True)" for k in ("qk_norm", "scale_embeddings") if not getattr(cfg, k)]
        if cfg.bias or cfg.qkv_bias:
            why.append("biases")
    else:  # what only Gemma has
        if cfg.norm_placement != "pre":
            why.append(f"norm_placement={cfg.norm_placement!r}")
        why += [k for k in ("qk_norm", "scale_embeddings") if getattr(cfg, k)]
        if cfg.attn_scale_dim not in (0, cfg.dh):
            why.append(f"attn_scale_dim={cfg.attn_scale_dim} (!= head_dim)")
        if cfg.local_rope and cfg.rope_local_theta != cfg.rope_theta:
            why.append("rope_local_theta (a RoPE base of their own for sliding-window layers)")
    if model_type == "gpt2":
        want = dict(positions="learned", norm="layernorm")
        why += [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items() if getattr(cfg, k) != v]
        if cfg.mlp not in GPT2_ACTS.values():
            why.append(f"mlp={cfg.mlp!r} (needs a dense MLP: {', '.join(sorted(set(GPT2_ACTS.values())))})")
        if cfg.kv_heads != cfg.n_heads or cfg.dh * cfg.n_heads != cfg.d_model:
            why.append("grouped-query heads or head_dim * n_heads != d_model")
        if kinds - {"L"}:
            why.append("sliding-window layers")
        return why
    if cfg.positions != "rope":
        why.append(f"positions={cfg.positions!r} (needs 'rope')")
    if cfg.norm not in ("rmsnorm", "rmsnorm_fused"):  # the fused kernel computes the same RMSNorm
        why.append(f"norm={cfg.norm!r} (needs 'rmsnorm')")
    if cfg.mlp not in GATED_ACTS.values():
        why.append(f"mlp={cfg.mlp!r} (needs {', '.join(dict.fromkeys(GATED_ACTS.values()))})")
    if model_type == "llama":
        if "S" in kinds:
            why.append("sliding-window layers")
        if cfg.qkv_bias and not cfg.bias:
            why.append("q/k/v biases without o/MLP biases (that is qwen2)")
    elif model_type == "mistral":
        if len(kinds) > 1:
            why.append("a mix of full and sliding-window layers")
        if cfg.bias or cfg.qkv_bias:
            why.append("biases")
    elif model_type == "qwen2" and cfg.bias:
        why.append("bias=True (qwen2 has q/k/v biases only)")
    return why


def _hf_config(cfg: ModelConfig, model_type: str, dtype: torch.dtype) -> dict:
    common = dict(
        architectures=[ARCHITECTURES[model_type]],
        model_type=model_type,
        vocab_size=cfg.vocab_size,
        initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=None,  # the tokenizer is not part of the model
        eos_token_id=None,
        dtype=str(dtype).removeprefix("torch."),
    )
    if model_type == "gpt2":
        act = {v: k for k, v in reversed(GPT2_ACTS.items())}[cfg.mlp]  # first HF name of each activation
        return dict(
            common,
            n_positions=cfg.context_length,
            n_embd=cfg.d_model,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_inner=cfg.ff_dim,
            activation_function=act,
            layer_norm_epsilon=cfg.norm_eps,
            embd_pdrop=cfg.dropout_embd,
            attn_pdrop=cfg.dropout_attn,
            resid_pdrop=cfg.dropout_resid,
            scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False,
            add_cross_attention=False,
        )
    out = dict(
        common,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ff_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.dh,
        max_position_embeddings=cfg.context_length,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},  # transformers 5.x
        rope_theta=cfg.rope_theta,  # transformers 4.x
        attention_dropout=cfg.dropout_attn,  # (dropout_embd / dropout_resid have no Llama-family key: train-only)
    )
    act = {v: k for k, v in reversed(GATED_ACTS.items())}[cfg.mlp]
    types = ["sliding_attention" if cfg.layer_kind(i) == "S" else "full_attention" for i in range(cfg.n_layers)]
    window = cfg.window if "sliding_attention" in types else None
    if model_type == GEMMA3:
        local = cfg.rope_local_theta or cfg.rope_theta
        return dict(
            out,
            hidden_activation=act,
            rope_parameters={  # transformers 5.x: one dict per layer type
                "full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                "sliding_attention": {"rope_type": "default", "rope_theta": local},
            },
            rope_local_base_freq=local,  # transformers 4.x (with rope_theta)
            rope_scaling=None,
            query_pre_attn_scalar=cfg.attn_scale_dim or cfg.dh,
            sliding_window=window,
            layer_types=types,
            attention_bias=False,
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
            use_bidirectional_attention=False,
            pad_token_id=None,
        )
    out.update(hidden_act=act)
    if model_type == "llama":
        out.update(attention_bias=cfg.bias, mlp_bias=cfg.bias)
    elif model_type == "mistral":
        out.update(sliding_window=window)
    else:
        out.update(use_sliding_window=window is not None, sliding_window=window, layer_types=types)
        out.update(max_window_layers=types.index("sliding_attention") if window else cfg.n_layers)
    return out


def _hf_state(model, model_type: str) -> dict[str, Tensor]:
    """The HF tensors of `model`. A bias the format has and we lack is written as zeros; a non-zero
    tensor of ours the format has no place for is refused."""
    cfg = model.config
    ours = {k: v.detach() for k, v in model.state_dict().items()}
    used = {"head.weight"}

    def get(name: str) -> Tensor:
        used.add(name)
        if name in ours:
            return ours[name]
        w = ours[name.removesuffix(".bias") + ".weight"]  # a bias we do not have: zeros of its output size
        return torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)

    out: dict[str, Tensor] = {}
    if model_type == "gpt2":
        prefix, pairs = "transformer.", _gpt2_names(cfg)
        for i in range(cfg.n_layers):
            a = f"blocks.{i}.attn.f."
            qkv_w = torch.cat([get(f"{a}{p}_proj.weight") for p in "qkv"])  # (3D, D)
            out[f"{prefix}h.{i}.attn.c_attn.weight"] = qkv_w.t()  # Conv1D: (D, 3D)
            out[f"{prefix}h.{i}.attn.c_attn.bias"] = torch.cat([get(f"{a}{p}_proj.bias") for p in "qkv"])
    else:
        prefix, pairs = "model.", _llama_names(cfg)
    offset = NORM_OFFSET.get(model_type, 0.0)
    for mine, theirs in pairs:
        if not theirs.endswith(".bias") or _has_bias(theirs, model_type, cfg.bias, cfg.bias):
            t = get(mine)
            if offset and theirs.endswith("norm.weight"):
                t = (t.float() - offset).to(t.dtype)  # Gemma stores w of its (1 + w) gain
            out[prefix + theirs] = t.t() if _is_conv1d(theirs) else t
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["head.weight"]
    dropped = [k for k in ours if k not in used and bool(ours[k].any())]
    if dropped:
        raise ScratchLMError(f"{model_type} has no place for the non-zero tensors {', '.join(dropped)}")
    return {k: v.cpu().contiguous().clone() for k, v in out.items()}  # clone: no two entries share storage


def save_hf(model, path: str | os.PathLike, model_type: str | None = None, overwrite: bool = False) -> str:
    """Write `model` as a Hugging Face checkpoint directory (config.json + model.safetensors),
    atomically. `model_type`: gpt2, llama, mistral, qwen2 or gemma3_text; None picks the first that can
    represent the config, in that order. Returns the model_type written."""
    from safetensors.torch import save_file

    cfg: ModelConfig = model.config
    if model_type is not None and model_type not in MODEL_TYPES:
        raise ScratchLMError(f"model_type={model_type!r} is not supported: expected {', '.join(MODEL_TYPES)}")
    problems = {t: _problems(cfg, t) for t in ([model_type] if model_type else MODEL_TYPES)}
    fits = [t for t, why in problems.items() if not why]
    if not fits:
        reasons = "; ".join(f"{t}: {', '.join(why)}" for t, why in problems.items())
        raise ScratchLMError(f"this model cannot be saved in Hugging Face format ({reasons})")
    model_type = fits[0]
    tensors = _hf_state(model, model_type)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "config.json", _hf_config(cfg, model_type, model.embed.weight.dtype))
    return model_type
