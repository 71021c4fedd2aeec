"""TransformerLM: token embedding -> blocks -> final norm -> output head.

model = TransformerLM(ModelConfig(d_model=256, n_layers=4, n_heads=4))
logits = model(input_ids)                       # (B, T) -> (B, T, V)
cache = model.new_cache(batch=1, max_len=512)   # generation: feed tokens in pieces
logits = model(prompt_ids, cache=cache); logits = model(next_ids, cache=cache)
h = model(input_ids, output="hidden")           # (B, T, D): for a fused head + loss

Structure: `embed` -> `blocks` (an nn.ModuleDict keyed "0".."L-1", each a `Block` of mixer + FFN) ->
`norm` -> `head`. Built on the meta device and materialised by one `init_weights`; RoPE tables are
computed once per forward from explicit per-token positions and handed to every layer in a
`StepContext` (context.py) with the generation cache; attention layers share one `attend`
callable (attend.py). `param_roles()` says what each parameter is (roles.py). Parallelism,
activation checkpointing and compile are applied from outside (`scratchlm.distributed.parallelize`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.model.attend import Attend, build_attend
from scratchlm.model.block import Block
from scratchlm.model.cache import ModelCache
from scratchlm.model.config import ModelConfig
from scratchlm.model.context import StepContext
from scratchlm.model.norms import build_norm
from scratchlm.model.positions import (
    RotaryEmbedding,
    SinusoidalPositions,
    build_absolute_positions,
)
from scratchlm.model.primitives import Embedding, Linear, ScaledEmbedding
from scratchlm.model.roles import ROLES, param_roles


class TransformerLM(nn.Module):
    def __init__(self, config: ModelConfig):
        """Build the module tree on the meta device (no memory, no init), then, unless the caller's
        default device is itself meta, materialise it there and run `init_weights` once. So

            model = TransformerLM(cfg)                        # built and initialised
            with torch.device("meta"):
                model = TransformerLM(cfg)                    # shapes only: shard it first (FSDP2), then
            model.to_empty(device="cuda"); model.init_weights()

        give the same parameters for the same seed: every tensor is initialised exactly once, in
        `init_weights`."""
        super().__init__()
        config.validate()
        self.config = cfg = config
        target = torch.get_default_device()
        with torch.device("meta"):
            embedding = ScaledEmbedding if cfg.scale_embeddings else Embedding
            self.embed = embedding(cfg.vocab_size, cfg.d_model, cfg.init_std)
            self.pos_embed = build_absolute_positions(cfg.positions, cfg.context_length, cfg.d_model, cfg.init_std)
            self.attend = build_attend(cfg)
            # Keyed by layer index, so pipeline stages that keep some blocks keep their parameter names.
            self.blocks = nn.ModuleDict({str(i): Block(cfg, i, self.attend) for i in range(cfg.n_layers)})
            self.norm = (
                build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias, cfg.ops) if cfg.final_norm else nn.Identity()
            )
            self.head = Linear(cfg.d_model, cfg.vocab_size, bias=False, std=cfg.init_std)
            self.rope = RotaryEmbedding(self.rope_dim, cfg.rope_theta) if self.rope_dim else None
            # sliding-window layers with a RoPE base of their own (Gemma 3): a second table per step
            self.rope_local = RotaryEmbedding(self.rope_dim, cfg.rope_local_theta) if cfg.local_rope else None
        self._tie()
        if target.type != "meta":
            self.to_empty(device=target)
            self.init_weights()

    @property
    def rope_dim(self) -> int:
        """Rotated dims per head: the head dim for softmax attention, MLA's decoupled part, 0 without RoPE."""
        cfg = self.config
        if cfg.positions != "rope" or cfg.attention == "linear":
            return 0
        return cfg.mla.rope_head_dim if cfg.attention == "mla" else cfg.dh

    def _tie(self) -> None:
        if self.config.tie_embeddings and isinstance(self.head, nn.Linear):  # a quantised head stands alone
            self.head.weight = self.embed.weight

    @torch.no_grad()
    def init_weights(self, buffer_device: torch.device | str | None = None) -> None:
        """Initialise every parameter and buffer, each exactly once (config `init_std` = s, L layers):

        - token embedding, learned positions, every Linear weight: normal(0, s) truncated at +-3s;
        - the last projection of each residual branch (attention/mixer output, MLP down, expert
          down): normal(0, s / sqrt(2L)), so the residual stream's variance does not grow with
          depth (GPT-2, Radford et al. 2019);
        - biases 0; norm gains 1, norm biases 0;
        - the output head: tied to the embedding, or normal(0, s) when untied;
        - MoE experts: `GroupedExperts.reset_parameters` (up/gate s, down s / sqrt(2L)); the S4D
          system: `DiagonalSSM.reset_parameters` (S4D-Lin);
        - buffers (RoPE inverse frequencies, sinusoid frequencies) on `buffer_device` (default: where
          the parameters are).
        Every module that owns parameters or buffers has a `reset_parameters`; here each is called
        once, with the depth-scaled std for residual outputs."""
        self._tie()
        s = self.config.init_std
        scaled = s / math.sqrt(2 * self.config.n_layers)
        device = buffer_device or self.embed.weight.device
        tied_head = self.head if self.config.tie_embeddings else None  # its weight is the embedding's: set once
        for m in self.modules():
            if m is self or m is tied_head or not hasattr(m, "reset_parameters"):
                continue
            if isinstance(m, Linear):
                m.reset_parameters(scaled if m.residual_out else s)
            elif isinstance(m, (RotaryEmbedding, SinusoidalPositions)):
                m.reset_parameters(device)
            else:
                m.reset_parameters()

    @torch.no_grad()
    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """Compute the non-persistent buffers (RoPE and sinusoid frequencies, the embedding scale) and
        nothing else: for a model materialised with `to_empty` whose weights come from a checkpoint."""
        device = device or self.embed.weight.device
        for m in self.modules():
            if isinstance(m, (RotaryEmbedding, SinusoidalPositions)):
                m.reset_parameters(device)
            elif isinstance(m, ScaledEmbedding):
                m.reset_buffers()

    @classmethod
    def from_state_dict(cls, config: ModelConfig, state_dict: dict[str, Tensor], device="cpu") -> TransformerLM:
        """A model holding `state_dict` (strictly: every name, every shape), without the random
        initialisation a plain construction would spend on weights that are then overwritten."""
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device=device)
        model._tie()  # to_empty gives the head a tensor of its own
        model.init_buffers(device)
        model.load_state_dict(state_dict, strict=True)
        return model

    def param_roles(self) -> dict[str, str]:
        """{parameter name: role} (see `roles.py`), asserted to partition the parameters."""
        roles = param_roles(self)
        unknown = [n for n, r in roles.items() if r not in ROLES]
        assert not unknown, f"parameters without a role: {unknown}"
        assert len(roles) == len(list(self.parameters())), "roles must cover every parameter once"
        return roles

    def set_attend(self, attend: Attend) -> None:
        """Install `attend` (signature of `attend.Attend`) in every attention layer: context parallelism and
        the paged inference engine bring their own."""
        self.attend = attend
        for block in self.blocks.values():
            if hasattr(block.mixer, "attend"):
                block.mixer.attend = attend

    def new_cache(self, batch: int, max_len: int | None = None) -> ModelCache:
        """Empty generation state for `batch` sequences of up to `max_len` tokens (default: context)."""
        max_len = max_len or self.config.context_length
        p = self.embed.weight
        layers = [b.mixer.new_cache(batch, max_len, p.device, p.dtype) for b in self.blocks.values()]
        return ModelCache(layers, max_len, batch, p.device)

    def forward(
        self,
        input_ids: Tensor,
        cache: ModelCache | None = None,
        positions: Tensor | None = None,
        output: str = "logits",
    ) -> Tensor:
        """input_ids (B, T) -> logits (B, T, V), or with output="hidden" the final hidden states (B, T, D)
        after the final norm (what the head reads; a fused head + loss takes them).

        cache: generation state the tokens continue (`new_cache`). positions: (B, T) long, the position
        of each token, -1 at (left) padding; default: 0..T-1, or each row's next positions in `cache`."""
        h = self.hidden(input_ids, cache, positions)  # (B, T, D)
        if output == "hidden":
            return h
        if output != "logits":
            raise ValueError(f"output must be 'logits' or 'hidden', got {output!r}")
        return self.head(h)  # (B, T, V)

    def step_context(self, input_ids: Tensor, cache: ModelCache | None, positions: Tensor | None) -> StepContext:
        """The per-step facts every block and mixer reads (see `context.py`)."""
        T = input_ids.shape[1]
        start = cache.length if cache is not None else 0
        if self.pos_embed is not None:  # learned positions end at the table: refuse with a Python int check
            self.pos_embed.check(start + T)
        padded = positions is not None
        if positions is None:
            positions = cache.positions(T) if cache is not None else torch.arange(T, device=input_ids.device)[None]
        rope = self.rope.tables(positions.clamp_min(0)) if self.rope is not None else None
        rope_local = self.rope_local.tables(positions.clamp_min(0)) if self.rope_local is not None else None
        return StepContext(positions, padded, rope, cache, rope_local)

    def hidden(self, input_ids: Tensor, cache: ModelCache | None = None, positions: Tensor | None = None) -> Tensor:
        """input_ids (B, T) -> the final hidden states (B, T, D), after the final norm: what the head reads."""
        ctx = self.step_context(input_ids, cache, positions)
        x = self.embed(input_ids)  # (B, T, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed(ctx.positions.clamp_min(0)).to(x.dtype)
        x = F.dropout(x, self.config.dropout_embd, self.training)
        for block in self.blocks.values():
            x = block(x, ctx)
        if cache is not None:
            cache.advance(ctx.positions)
        return self.norm(x)  # (B, T, D)

    def aux_loss(self) -> Tensor:
        """Sum of the auxiliary losses (MoE load balancing, router z-loss) of the last forward."""
        losses = [b.mlp.aux_loss for b in self.blocks.values() if isinstance(getattr(b.mlp, "aux_loss", None), Tensor)]
        return torch.stack(losses).sum() if losses else torch.zeros((), device=self.embed.weight.device)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_hf(cls, path, dtype: torch.dtype = torch.float32) -> TransformerLM:
        """Load a Hugging Face gpt2 / llama / mistral / qwen2 / gemma3_text checkpoint directory (see `hf.py`)."""
        from scratchlm.model.hf import load_hf

        return load_hf(path, dtype)

    def save_hf(self, path, model_type: str | None = None, overwrite: bool = False) -> str:
        """Write a checkpoint directory `transformers` can load; returns the model_type chosen (see `hf.py`)."""
        from scratchlm.model.hf import save_hf

        return save_hf(self, path, model_type, overwrite)
