"""`train(cfg)`: run (or resume) one training run; used by `scratchlm train`, sweeps, the quickstart and benchmarks.

    scratchlm train --preset quickstart                                  # CPU, one process
    torchrun --nproc_per_node 2 -m scratchlm train --preset quickstart   # data parallel (gloo / NCCL)
    scratchlm train --resume runs/quickstart                             # continue exactly where it stopped

    from scratchlm.train.loop import train
    summary = train(load_config(TrainConfig, "train", "quickstart"))

Where things are:
    trainer.py    Trainer: setup, the loop, logging, periodic evaluation and checkpoints, summary
    step.py       train_step: forward, loss, backward over micro-batches, clip, optimizer step
    losses.py     build_loss: the LossFn train_step calls (plain or fused cross-entropy, z-loss)
    evaluator.py  Evaluator: validation loss, bits per byte, sampled completions
    state.py      TrainState: what a checkpoint holds; checkpoint.py writes and reads it
    ../distributed/  init_distributed (Mesh) and parallelize (activation checkpointing, compile, DDP)
"""

from __future__ import annotations

from scratchlm.train.config import TrainConfig
from scratchlm.train.data import TokenData
from scratchlm.train.trainer import Trainer


def train(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    train_data: TokenData | None = None,
    valid_data: TokenData | None = None,
) -> dict:
    """Run (or resume) training per `cfg`; returns the run summary (also in `out_dir/summary.json`).
    `train_data` / `valid_data` replace the token files of `cfg.data` (see `Trainer`)."""
    trainer = Trainer(cfg, resume, overwrite, progress, train_data=train_data, valid_data=valid_data)
    try:
        return trainer.run()
    finally:
        trainer.close()
