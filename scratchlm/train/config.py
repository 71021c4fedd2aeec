"""TrainConfig: everything a training run needs, one nested dataclass (presets in configs/train/).

scratchlm train --preset quickstart --set optim.lr=3e-3 --set model.n_layers=6
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchlm.errors import ScratchLMError
from scratchlm.model.config import ModelConfig


@dataclass
class DataConfig:
    train: str = ""  # token file written by `scratchlm tokenizer encode` (its sidecar beside it)
    valid: str = ""  # token file for evaluation; empty = no validation
    tokenizer: str = ""  # tokenizer directory (samples, bits per byte); empty = from the token file's sidecar


@dataclass
class OptimConfig:
    name: Literal["adamw", "muon", "soap"] = "adamw"
    lr: float = 1e-3  # peak learning rate (Muon: of the AdamW groups; see muon_lr)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled; applied to 2-D hidden weights only (see optim.param_groups)
    decay_embeddings: bool = False  # also decay embedding / head matrices
    muon_lr: float = 0.02  # Muon's own lr for 2-D hidden weights (Jordan et al. 2024)
    muon_momentum: float = 0.95
    muon_ns_steps: int = 5  # Newton-Schulz iterations
    soap_precondition_frequency: int = 10  # SOAP: recompute the eigenbases every N steps
    grad_clip: float = 1.0  # global-norm clipping; 0 = off
    z_loss: float = 0.0  # coefficient of the output z-loss (PaLM: 1e-4); 0 = off


@dataclass
class ScheduleConfig:
    name: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # final lr = min_lr_ratio * peak
    decay_fraction: float = 0.2  # WSD: fraction of the run spent in the cooldown
    cooldown: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt"  # WSD cooldown shape (Hagele et al. 2024)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    out_dir: str = "runs/run"  # run directory: config, metrics.jsonl, checkpoints, plots
    seed: int = 0
    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # sequences per micro-batch (per process)
    grad_accum: int = 1  # micro-batches per optimizer step
    seq_len: int = 0  # tokens per sequence; 0 = model.context_length
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; master weights stay fp32
    compile: bool = False  # torch.compile the model (distributed.parallelize)
    activation_checkpointing: bool = False  # recompute each block's activations in the backward (less memory)
    device: str = "auto"  # auto = cuda if available, else cpu
    eval_every: int = 100  # steps between validations (and samples); 0 = only at the end
    eval_tokens: int = 0  # tokens of the validation file used per eval; 0 = the whole file
    sample_tokens: int = 48  # tokens generated per sample at each eval; 0 = no samples
    sample_prompts: list[str] = field(default_factory=lambda: [""])  # "" = start from the document separator
    log_every: int = 10
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at evals and at the end
    keep_last: int = 2  # checkpoints kept besides the best one
    noise_scale: bool = True  # log the gradient noise scale B_simple (needs grad_accum >= 2; train/noise_scale.py)
    time_limit_s: float = 0.0  # stop (with a checkpoint) after this much training time; 0 = none
    wandb: bool = False  # log to Weights & Biases if installed
    tensorboard: bool = False  # log to TensorBoard if installed

    @property
    def context(self) -> int:
        return self.seq_len or self.model.context_length

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.context

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ScratchLMError(f"invalid train config: {msg}")

        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 0 or self.context > self.model.context_length and self.model.positions == "learned":
            bad(f"seq_len {self.seq_len} exceeds model.context_length {self.model.context_length}")
        if self.optim.lr <= 0 or not 0 <= self.optim.betas[0] < 1 or not 0 <= self.optim.betas[1] < 1:
            bad("optim.lr must be > 0 and betas in [0, 1)")
        if len(self.optim.betas) != 2:
            bad(f"optim.betas must have two values, got {self.optim.betas}")
        if self.schedule.warmup_steps < 0 or not 0 <= self.schedule.min_lr_ratio <= 1:
            bad("schedule.warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")
        if not 0 < self.schedule.decay_fraction <= 1:
            bad(f"schedule.decay_fraction must be in (0, 1], got {self.schedule.decay_fraction}")
        if self.model.fused_loss and self.optim.z_loss:
            bad("optim.z_loss needs the logits, which model.fused_loss never builds: use one of them")
        if self.keep_last < 1:
            bad(f"keep_last must be >= 1, got {self.keep_last}")
        if not 0 <= self.sample_tokens < self.model.context_length:
            ctx = self.model.context_length
            bad(f"sample_tokens must be in [0, model.context_length={ctx}), got {self.sample_tokens}")
