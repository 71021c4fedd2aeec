"""Training: optimizers, schedules, losses, data loading, the loop, checkpoints, metrics, sweeps.

from scratchlm.train.config import TrainConfig
from scratchlm.train.loop import train
summary = train(load_config(TrainConfig, "train", "quickstart"))
"""
