"""Parallelism applied from outside the model; the model code stays single-device. Launch with `torchrun`.

mesh.py             `init_distributed(cfg)` -> `Mesh`: device, rank, `ParallelDims` (dp_replicate, dp_shard,
                    cp, tp, pp from cfg.parallel, checked before any process group), the DeviceMesh
parallelize.py      `parallelize(model, cfg, mesh)`: tensor parallel, context parallel, activation
                    checkpointing (full / selective), torch.compile, FSDP2 or DDP, in torchtitan's order
tensor_parallel.py  colwise / rowwise plans for attention and MLP, sequence parallel norms, vocab-parallel
                    embedding and head (`parallelize_module`)
fsdp.py             FSDP2 (`fully_shard` per block then the root, mixed-precision policy), HSDP
dcp.py              checkpoints of sharded runs: gathered full states (any layout resumes them) and
                    torch.distributed.checkpoint shards, convertible to one safetensors file
ddp.py              DDP wrapping and the loss all-reduce
data_parallel.py    own DDP: async per-parameter or bucketed all-reduce from grad hooks, no_sync (teaching)
zero.py             own ZeRO-1/2 `ShardedOptimizer` over any torch optimizer class
comm_count.py       `count_comm()`: calls, payload and ring bus bytes per torch.distributed collective

torchrun --nproc_per_node 4 -m scratchlm train --preset quickstart --set parallel.dp_shard=2 --set parallel.tp=2
"""
