"""Benchmarks of the model and of the collectives, from Python and from `scratchlm bench`.

    from scratchlm.bench.model import ModelBenchConfig, run_model_bench
    result = run_model_bench(ModelBenchConfig(preset="small", batch=4, seq_len=128, mode="fwd_bwd"))
    from scratchlm.bench.collectives import AllReduceConfig, run_allreduce_bench
    rows = run_allreduce_bench(AllReduceConfig(nproc=2, sizes_mb=[1, 16]))

model.py: timed forward / forward+backward / training steps with MFU against a measured matmul
peak, torch.profiler traces and memory records. collectives.py: all-reduce algorithm and bus bandwidth.
"""
