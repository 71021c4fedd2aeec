"""TransformerLM: token embedding -> blocks -> final norm -> output head.

model = TransformerLM(ModelConfig(d_model=256, n_layers=4, n_heads=4))
logits = model(input_ids)                       # (B, T) -> (B, T, V)
cache = model.new_cache(batch=1, max_len=512)   # generation: feed tokens in pieces
logits = model(prompt_ids, cache=cache); logits = model(next_ids, cache=cache)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.model.block import Block
from scratchlm.model.config import ModelConfig
from scratchlm.model.norms import LayerNorm, RMSNorm, build_norm
from scratchlm.model.positions import LearnedPositions, build_absolute_positions
from scratchlm.model.primitives import Embedding, Linear, cross_entropy, trunc_normal_


class ModelCache:
    """Per-layer generation state (KV caches, recurrent states) and the number of tokens seen."""

    def __init__(self, layers: list, max_len: int):
        self.layers = layers
        self.max_len = max_len
        self.length = 0


class TransformerLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, cfg.init_std)
        self.pos_embed = build_absolute_positions(cfg.positions, cfg.context_length, cfg.d_model, cfg.init_std)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias) if cfg.final_norm else nn.Identity()
        self.head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        # Modules whose position tables must cover the positions of a forward (plain list: they are
        # registered in the tree already).
        self._position_tables = [m for m in self.modules() if m is not self and hasattr(m, "ensure")]
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every tensor (config `init_std` = s, L layers):

        - token embedding, learned positions, every Linear weight: normal(0, s) truncated at +-3s;
        - the last projection of each residual branch (attention/mixer output, MLP down, expert
          down): normal(0, s / sqrt(2L)), so the residual stream's variance does not grow with
          depth (GPT-2, Radford et al. 2019);
        - biases 0; norm gains 1, norm biases 0;
        - the output head: tied to the embedding, or normal(0, s) when untied;
        - parameters with an init of their own (SSM A/dt/B/C/D, MoE experts and router) are reset
          by their module's `reset_parameters()`, documented there.
        """
        s = self.config.init_std
        scaled = s / math.sqrt(2 * self.config.n_layers)
        for m in self.modules():
            if isinstance(m, Linear):
                trunc_normal_(m.weight, scaled if m.residual_out else s)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, (Embedding, LearnedPositions)):
                trunc_normal_(m.weight, s)
            elif isinstance(m, (RMSNorm, LayerNorm)):
                m.weight.fill_(1.0)
                if m.bias is not None:
                    m.bias.zero_()
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if self.config.tie_embeddings:
            self.head.weight = self.embed.weight

    def new_cache(self, batch: int, max_len: int | None = None) -> ModelCache:
        """Empty generation state for `batch` sequences of up to `max_len` tokens (default: context)."""
        max_len = max_len or self.config.context_length
        p = self.embed.weight
        layers = [b.mixer.new_cache(batch, max_len, p.device, p.dtype) for b in self.blocks]
        return ModelCache(layers, max_len)

    def forward(self, input_ids: Tensor, cache: ModelCache | None = None, targets: Tensor | None = None) -> Tensor:
        """input_ids (B, T) -> logits (B, T, V). With `cache`, the tokens continue the cached ones.

        With `targets` (B, T): the mean cross-entropy instead (see `loss`), so that DDP and torch.compile
        wrappers, which only know `forward`, can run the fused head + loss."""
        h = self.hidden(input_ids, cache)  # (B, T, D)
        if targets is not None:
            return self._loss(h, targets)
        return self.head(h)  # (B, T, V)

    def loss(self, input_ids: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
        """Mean next-token cross-entropy of (B, T) inputs against (B, T) targets (ignore_index skipped).

        With `fused_loss` the head and the loss run in row chunks (`scratchlm.kernels.linear_cross_entropy`)
        and the (B*T, V) logits never exist, in the forward or the backward."""
        return self._loss(self.hidden(input_ids), targets, ignore_index)

    def _loss(self, h: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
        if self.config.fused_loss:
            from scratchlm.kernels.linear_cross_entropy import linear_cross_entropy

            return linear_cross_entropy(h, self.head.weight, targets, ignore_index)
        return cross_entropy(self.head(h), targets, ignore_index=ignore_index)

    def hidden(self, input_ids: Tensor, cache: ModelCache | None = None) -> Tensor:
        """input_ids (B, T) -> the final hidden states (B, T, D), after the final norm: what the head reads."""
        B, T = input_ids.shape
        start = cache.length if cache is not None else 0
        for table in self._position_tables:  # grow RoPE/sinusoid tables, or refuse past learned positions
            table.ensure(start + T)
        pos = torch.arange(start, start + T, device=input_ids.device)  # (T,)
        x = self.embed(input_ids)  # (B, T, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed(pos).to(x.dtype)
        x = F.dropout(x, self.config.dropout_embd, self.training)
        for i, block in enumerate(self.blocks):
            x = block(x, pos, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.length += T
        return self.norm(x)  # (B, T, D)

    def aux_loss(self) -> Tensor:
        """Sum of the auxiliary losses (MoE load balancing, router z-loss) of the last forward."""
        losses = [
            m.aux_loss for m in self.modules() if m is not self and isinstance(getattr(m, "aux_loss", None), Tensor)
        ]
        return torch.stack(losses).sum() if losses else torch.zeros((), device=self.embed.weight.device)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_hf(cls, path, dtype: torch.dtype = torch.float32) -> TransformerLM:
        """Load a Hugging Face gpt2 / llama / mistral / qwen2 checkpoint directory (see `hf.py`)."""
        from scratchlm.model.hf import load_hf

        return load_hf(path, dtype)

    def save_hf(self, path, model_type: str | None = None, overwrite: bool = False) -> str:
        """Write a checkpoint directory `transformers` can load; returns the model_type chosen (see `hf.py`)."""
        from scratchlm.model.hf import save_hf

        return save_hf(self, path, model_type, overwrite)
