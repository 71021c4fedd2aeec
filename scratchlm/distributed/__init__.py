"""Parallelism applied from outside the model: data parallel (DDP) now; sharding and tensor /
pipeline parallel later. Launch with `torchrun`; the model code stays single-device."""
