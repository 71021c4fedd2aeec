"""GGUF import: a llama.cpp model file -> ModelConfig + weights (+ its tokenizer and chat template).

    gg = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")   # metadata + tensor index, nothing dequantised yet
    model = gg.model(dtype=torch.float32)                # TransformerLM with dequantised weights
    chat = gg.chat_tokenizer()                           # tokenizer + BOS/EOS + chat template

The container is read by the `gguf` package (llama.cpp's own reader: memory-mapped, no code
execution) and its block formats are dequantised by `gguf.quants`; the point of this module is the
mapping. A GGUF is converted in two steps: llama.cpp's metadata keys become a Hugging Face
config.json dict and its tensor names the Hugging Face ones, then `hf.model_from_hf` builds the
model, so the architecture facts live in one place (hf.py). Two layout facts differ from Hugging
Face checkpoints:

- llama: llama.cpp's converter permutes the rows of q and k within each head from the "halves"
  RoPE layout (i, i + Dh/2) into interleaved pairs (2i, 2i+1), the layout of Meta's original
  checkpoints and of ggml's RoPE. scratchlm rotates halves (as HF Llama), so the permutation is
  undone here. Gemma's converter does not permute (its RoPE is the halves, "NeoX", form).
- gemma3: llama.cpp stores every RMSNorm weight as 1 + w (Gemma multiplies by 1 + w); Hugging Face
  stores w, so 1 is subtracted here.

Supported: architectures `llama` and `gemma3`; tensor types F32, F16, BF16 and every block format
`gguf.quants` dequantises (Q4_0 ... Q8_0, the K-quants, IQ*, TQ*). Anything else is a one-line error
naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scratchlm.errors import ScratchLMError

ARCHITECTURES = ("llama", "gemma3")
GGUF_MAGIC = b"GGUF"

# llama.cpp's per-block tensor names (after `blk.N.`) -> Hugging Face's (after `model.layers.N.`)
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_ARCH_BLOCK_NAMES = {
    # Llama has one norm before the MLP; Gemma 3 has a pre- and a post-norm around each sublayer
    "llama": {"ffn_norm": "post_attention_layernorm"},
    "gemma3": {
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# tensors llama.cpp writes that are not weights (precomputed RoPE tables of some converters)
_IGNORED = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


@dataclass
class GGUFFile:
    """The metadata (python values) and tensor index of one GGUF file."""

    path: Path
    metadata: dict
    tensors: dict = field(repr=False)  # name -> gguf ReaderTensor (memory-mapped, not yet dequantised)

    @property
    def architecture(self) -> str:
        return self.metadata["general.architecture"]

    def hf_config(self) -> dict:
        return hf_config_from_gguf(self.metadata, has_output="output.weight" in self.tensors, source=self.path)

    def hf_tensors(self, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """Every weight, dequantised, under its Hugging Face name."""
        cfg = self.hf_config()
        out = {}
        for name, t in self.tensors.items():
            if name in _IGNORED:
                continue
            hf_name = hf_tensor_name(name, self.architecture, self.path)
            w = torch.from_numpy(dequantize(t, self.path))
            if self.architecture == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
                heads = cfg["num_attention_heads"] if "q_proj" in hf_name else cfg["num_key_value_heads"]
                w = unpermute_rope_rows(w, heads)
            if self.architecture == "gemma3" and hf_name.endswith("norm.weight"):
                w = w - 1.0
            out[hf_name] = w.to(dtype)
        return out

    def model(self, dtype: torch.dtype = torch.float32):
        """A TransformerLM holding this file's weights, dequantised to `dtype`, in eval mode."""
        from scratchlm.model.hf import model_from_hf

        # fp32 through the conversion (the norm offset, the permutation), then one cast
        model = model_from_hf(self.hf_config(), self.hf_tensors(torch.float32), str(self.path))
        return model.to(dtype).eval()

    def chat_tokenizer(self):
        """The tokenizer this file describes, with its BOS/EOS rules and chat template."""
        from scratchlm.tokenizer.gguf_vocab import chat_tokenizer_from_gguf

        return chat_tokenizer_from_gguf(self.metadata, source=str(self.path))


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Open a GGUF file: a one-line ScratchLMError for a missing, non-GGUF, truncated or unsupported file."""
    path = Path(path)
    if not path.is_file():
        raise ScratchLMError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ScratchLMError(f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path, "r")
        metadata = {}
        for key, fld in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            metadata[key] = fld.contents()
        tensors = {t.name: t for t in reader.tensors}
        for t in tensors.values():  # a truncated file: the last tensors' bytes are missing
            if t.data.nbytes != t.n_bytes:
                raise ValueError(f"tensor {t.name} holds {t.data.nbytes} of its {t.n_bytes} bytes")
    except (ValueError, IndexError, KeyError, OSError, TypeError, UnicodeDecodeError) as e:
        raise ScratchLMError(f"{path} is not a readable GGUF file (truncated or corrupt?): {e}") from None
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ScratchLMError(
            f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    for t in tensors.values():
        check_tensor_type(t, path)
    return GGUFFile(path, metadata, tensors)


# ---------------------------------------------------------------------------------------- tensors
def _dequantizers() -> set[str]:
    """Names of the tensor types we can turn into floats: plain floats + what gguf.quants implements."""
    import gguf.quants as q

    ok = {"F32", "F16", "BF16"}
    for qtype in q.GGMLQuantizationType:
        impl = getattr(q, qtype.name, None)
        # a class of gguf.quants with its own block decoder (the base class raises NotImplementedError)
        if isinstance(impl, type) and "dequantize_blocks" in vars(impl):
            ok.add(qtype.name)
    return ok


_SUPPORTED_TYPES: set[str] | None = None


def check_tensor_type(t, source) -> None:
    global _SUPPORTED_TYPES
    if _SUPPORTED_TYPES is None:
        _SUPPORTED_TYPES = _dequantizers()
    if t.tensor_type.name not in _SUPPORTED_TYPES:
        raise ScratchLMError(
            f"{source}: tensor {t.name} has GGUF type {t.tensor_type.name}, which scratchlm cannot dequantise "
            f"(supported: {', '.join(sorted(_SUPPORTED_TYPES))})"
        )


def dequantize(t, source) -> np.ndarray:
    """(rows, cols) float32 array of a GGUF tensor (numpy order: the reverse of ggml's `ne`)."""
    from gguf.quants import dequantize as gguf_dequantize

    check_tensor_type(t, source)
    shape = tuple(int(n) for n in reversed(t.shape))  # ggml ne = (cols, rows, ...) -> (rows, cols)
    out = gguf_dequantize(t.data, t.tensor_type)
    return np.array(out.reshape(shape), dtype=np.float32)  # a copy: F32 tensors are views of the read-only map


def unpermute_rope_rows(w: Tensor, n_heads: int) -> Tensor:
    """Undo llama.cpp's q/k row permutation: per head, rows (2i, 2i+1) interleaved -> halves (i, i + Dh/2).

    llama.cpp's `permute` reshapes (H, 2, Dh/2, D) -> swap the two middle axes -> (H, Dh/2, 2, D)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def hf_tensor_name(name: str, arch: str, source) -> str:
    base, _, kind = name.rpartition(".")
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{kind}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        table = {**_BLOCK_NAMES, **_ARCH_BLOCK_NAMES[arch]}
        if parts[2] in table:
            return f"model.layers.{parts[1]}.{table[parts[2]]}.{kind}"
    raise ScratchLMError(f"{source}: tensor {name!r} is not part of scratchlm's {arch} mapping")


# ---------------------------------------------------------------------------------------- metadata
def _meta(md: dict, key: str, source, default=None):
    if key in md:
        return md[key]
    if default is None:
        raise ScratchLMError(f"{source}: GGUF metadata has no {key!r}")
    return default


def hf_config_from_gguf(md: dict, has_output: bool, source) -> dict:
    """The Hugging Face config.json dict equivalent to a GGUF file's metadata."""
    arch = md.get("general.architecture")
    a = f"{arch}."
    heads = int(_meta(md, a + "attention.head_count", source))
    d = int(_meta(md, a + "embedding_length", source))
    tokens = md.get("tokenizer.ggml.tokens")
    vocab = int(md.get(a + "vocab_size") or (len(tokens) if tokens else 0))
    if not vocab:
        raise ScratchLMError(f"{source}: GGUF metadata gives no vocabulary size")
    scaling = md.get(a + "rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise ScratchLMError(f"{source}: {a}rope.scaling.type={scaling!r} is not supported (RoPE scaling)")
    head_dim = int(md.get(a + "attention.key_length") or md.get(a + "rope.dimension_count") or d // heads)
    if int(md.get(a + "attention.value_length", head_dim)) != head_dim:
        raise ScratchLMError(f"{source}: key and value head sizes differ; not supported")
    cfg = dict(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=int(_meta(md, a + "feed_forward_length", source)),
        num_hidden_layers=int(_meta(md, a + "block_count", source)),
        num_attention_heads=heads,
        num_key_value_heads=int(md.get(a + "attention.head_count_kv", heads)),
        head_dim=head_dim,
        max_position_embeddings=int(_meta(md, a + "context_length", source)),
        rms_norm_eps=float(_meta(md, a + "attention.layer_norm_rms_epsilon", source)),
        tie_word_embeddings=not has_output,
        bos_token_id=md.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=md.get("tokenizer.ggml.eos_token_id"),
    )
    if arch == "llama":
        if head_dim != int(md.get(a + "rope.dimension_count", head_dim)):
            raise ScratchLMError(f"{source}: partial RoPE (rope.dimension_count < head size) is not supported")
        return dict(cfg, model_type="llama", hidden_act="silu", rope_theta=float(md.get(a + "rope.freq_base", 1e4)))
    # gemma3: llama.cpp keeps only the global RoPE base; the local base, the query scale and the
    # layer pattern are constants of the architecture (Gemma3TextConfig's defaults, llama.cpp's
    # hparams: the 27B model, 62 layers, scales queries by (d_model / heads)^-1/2, the others by head_dim^-1/2)
    n_layers = cfg["num_hidden_layers"]
    return dict(
        cfg,
        model_type="gemma3_text",
        hidden_activation="gelu_pytorch_tanh",
        rope_theta=float(md.get(a + "rope.freq_base", 1e6)),
        rope_local_base_freq=10_000.0,
        sliding_window=int(_meta(md, a + "attention.sliding_window", source)),
        sliding_window_pattern=6,
        query_pre_attn_scalar=d // heads if n_layers == 62 else head_dim,
        final_logit_softcapping=md.get(a + "final_logit_softcapping"),
        attn_logit_softcapping=md.get(a + "attn_logit_softcapping"),
    )
