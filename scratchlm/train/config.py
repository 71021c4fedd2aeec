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
class DistillConfig:
    """Logit distillation (`loss = "distill"`, train/distill.py): the student learns a teacher's next-token
    distributions as well as the next tokens. The teacher must share the student's tokenizer."""

    teacher: str = ""  # teacher: a pretrained name, model directory or run directory (e.g. smollm2-135m-instruct)
    kind: Literal["forward", "reverse", "mix"] = "forward"  # KL(teacher||student), KL(student||teacher), or a mix
    temperature: float = 1.0  # soft targets softmax(z / temperature) of both models; the KD term is x temperature^2
    alpha: float = 0.5  # loss = alpha * KD + (1 - alpha) * next-token cross-entropy
    beta: float = 0.5  # kind = "mix": (1 - beta) * forward KL + beta * reverse KL
    topk_cache: str = ""  # teacher top-k cache of data.train (`write_topk_cache`); "" = run the teacher every step

    def validate(self) -> None:
        if not self.temperature > 0:
            raise ScratchLMError(f"invalid train config: distill.temperature must be > 0, got {self.temperature}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ScratchLMError(f"invalid train config: distill.{name} must be in [0, 1], got {value}")


@dataclass
class ParallelConfig:
    """How the processes of a `torchrun` launch share the work (distributed/mesh.py, distributed/parallelize.py).

    torchrun --nproc_per_node 4 -m scratchlm train --preset quickstart --set parallel.dp_shard=2 --set parallel.tp=2

    The product of the dims is the number of processes; a -1 dim takes what the others leave: by default
    every process is a DDP replica (dp_replicate = -1), as before this section existed."""

    dp_replicate: int = -1  # DDP replicas (HSDP when dp_shard > 1 too); -1 = the processes left over
    dp_shard: int = 1  # FSDP2 shards (fully_shard); -1 = the processes left over (then dp_replicate -1 means 1)
    tp: int = 1  # tensor parallel (heads and MLP columns), with sequence parallel norms unless turned off
    cp: int = 1  # context parallel (ring attention over sequence shards)
    pp: int = 1  # pipeline parallel stages (the step's grad_accum micro-batches flow through them)
    pp_schedule: Literal["1f1b", "gpipe"] = "1f1b"  # pipeline schedule (torch.distributed.pipelining)
    sequence_parallel: bool = True  # with tp > 1: norms and residual stream sharded along the sequence
    loss_parallel: bool = False  # with tp > 1: logits stay sharded over the vocabulary, the loss reduces them
    activation_checkpointing: Literal["", "none", "full", "selective"] = ""  # "" = the top-level bool decides
    param_dtype: Literal["auto", "fp32", "bf16"] = (
        "auto"  # FSDP2 compute dtype of parameters; auto = bf16 iff precision bf16
    )
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"  # FSDP2 gradient reduce-scatter dtype
    timeout_s: float = 600.0  # a collective waiting longer (a rank died or hangs) raises, so the others exit


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: Literal["", "lm", "fused_lm", "distill"] = ""  # "" = lm (fused_lm with model.fused_loss); losses.py
    distill: DistillConfig = field(default_factory=DistillConfig)  # used by loss = "distill"
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # multi-process layout (torchrun)
    out_dir: str = "runs/run"  # run directory: config, metrics.jsonl, checkpoints, plots
    seed: int = 0
    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # sequences per micro-batch (per process)
    grad_accum: int = 1  # micro-batches per optimizer step
    seq_len: int = 0  # tokens per sequence; 0 = model.context_length
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; master weights stay fp32
    compile: bool = False  # torch.compile the model (distributed.parallelize)
    activation_checkpointing: bool = (
        False  # recompute each block's activations in the backward (= parallel.activation_checkpointing "full")
    )
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
    def checkpointing(self) -> str:
        """Activation checkpointing mode: none | full | selective (parallel.activation_checkpointing, else the bool)."""
        return self.parallel.activation_checkpointing or ("full" if self.activation_checkpointing else "none")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.context

    def validate(self) -> None:
        """Every setting checked here, at the config boundary, with its key in the message."""

        def bad(msg: str) -> None:
            raise ScratchLMError(f"invalid train config: {msg}")

        def at_least(minimum: float, *names: str) -> None:
            for name in names:
                value = _get(self, name)
                if not value >= minimum:  # also catches NaN
                    bad(f"{name} must be >= {minimum}, got {value}")

        at_least(1, "steps", "batch_size", "grad_accum", "log_every", "keep_last")
        at_least(1, "optim.muon_ns_steps", "optim.soap_precondition_frequency")
        at_least(0, "seq_len", "eval_every", "eval_tokens", "checkpoint_every", "time_limit_s")
        at_least(0, "optim.weight_decay", "optim.grad_clip", "optim.z_loss", "schedule.warmup_steps")
        if self.context > self.model.context_length and self.model.positions == "learned":
            bad(f"seq_len {self.seq_len} exceeds model.context_length {self.model.context_length}")
        o = self.optim
        if not o.lr > 0:
            bad(f"optim.lr must be > 0, got {o.lr}")
        if not o.muon_lr > 0:
            bad(f"optim.muon_lr must be > 0, got {o.muon_lr}")
        if not o.eps > 0:
            bad(f"optim.eps must be > 0, got {o.eps}")
        if len(o.betas) != 2:
            bad(f"optim.betas must have two values, got {o.betas}")
        if not all(0 <= b < 1 for b in o.betas):
            bad(f"optim.betas must be in [0, 1), got {o.betas}")
        if not 0 <= o.muon_momentum < 1:
            bad(f"optim.muon_momentum must be in [0, 1), got {o.muon_momentum}")
        if not 0 <= self.schedule.min_lr_ratio <= 1:
            bad(f"schedule.min_lr_ratio must be in [0, 1], got {self.schedule.min_lr_ratio}")
        if not 0 < self.schedule.decay_fraction <= 1:
            bad(f"schedule.decay_fraction must be in (0, 1], got {self.schedule.decay_fraction}")
        if self.model.fused_loss and o.z_loss:
            bad("optim.z_loss needs the logits, which model.fused_loss never builds: use one of them")
        if self.loss == "distill" and not (self.distill.teacher or self.distill.topk_cache):
            bad("loss = distill needs distill.teacher (a model name or directory) or distill.topk_cache")
        if self.parallel.loss_parallel and (self.loss not in ("", "lm") or self.optim.z_loss):
            bad("parallel.loss_parallel computes the plain next-token loss: loss = lm and optim.z_loss = 0")
        if self.loss == "distill" and self.parallel.cp > 1:
            bad("loss = distill with parallel.cp > 1: the teacher would see only this rank's part of each sequence")
        if self.loss == "distill" and self.model.fused_loss:
            bad("loss = distill reads the student's logits, which model.fused_loss never builds: use one of them")
        if not 0 <= self.sample_tokens < self.model.context_length:
            ctx = self.model.context_length
            bad(f"sample_tokens must be in [0, model.context_length={ctx}), got {self.sample_tokens}")
        check_device(self.device, "device")
        if not self.parallel.timeout_s > 0:
            bad(f"parallel.timeout_s must be > 0, got {self.parallel.timeout_s}")


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def check_device(name: str, key: str) -> None:
    """`auto`, or a device string torch reads (`cpu`, `cuda`, `cuda:1`, `mps`) of a type training can use.
    Whether the device exists on this machine is checked when the run starts (distributed.mesh)."""
    if name == "auto":
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ScratchLMError(f"invalid {key} {name!r}: use auto, cpu, cuda, cuda:N or mps")


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg
