"""Parallelism applied from outside the model; the model code stays single-device. Launch with `torchrun`.

    mesh.py         `init_distributed(cfg)` -> `Mesh`: device, rank, parallel dims (`ParallelDims`), DeviceMesh
    parallelize.py  `parallelize(model, cfg, mesh)`: tensor parallel (later), activation checkpointing,
                    torch.compile, DDP, in torchtitan's order; `unwrap_model`
    ddp.py          DDP wrapping and the loss all-reduce

Sharding (ZeRO / FSDP2) and tensor / pipeline / context parallel come later, as new dims and steps here.
"""
