"""`scratchlm bench model | allreduce`: time the model and the collectives.

    scratchlm bench model --preset small --batch 4 --seq-len 128 --mode fwd_bwd --warmup 2 --steps 5
    scratchlm bench model --preset debug --mode step --autocast bf16 --profile prof/ --memory-snapshot mem.json
    scratchlm bench model --preset xl --seq-len 512 --device cuda --compile --memory-snapshot mem.pickle
    scratchlm bench allreduce --nproc 2 --sizes-mb 1,4,16,64,256 --json allreduce.json
    torchrun --nproc_per_node 4 -m scratchlm bench allreduce --sizes-mb 1,1024 --backend nccl

Results print as a table; `--json FILE` also writes them as JSON (atomically).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmark the model (timings, MFU, profiles) and all-reduce")
    verbs = p.add_subparsers(dest="verb", metavar="<verb>", required=True)

    m = verbs.add_parser("model", help="time fwd / fwd_bwd / step on random tokens: tokens/s, MFU, profile, memory")
    m.add_argument("--preset", default="small", help="a CS336 size (small, medium, large, xl, 2.7b) or a model preset")
    m.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model config value (repeatable)",
    )
    m.add_argument("--batch", type=int, default=4)
    m.add_argument("--seq-len", type=int, default=128)
    m.add_argument(
        "--mode",
        choices=("fwd", "fwd_bwd", "step"),
        default="fwd_bwd",
        help="fwd: no_grad forward; fwd_bwd: forward + loss + backward; step: + AdamW step",
    )
    m.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    m.add_argument("--steps", type=int, default=5, help="timed steps")
    m.add_argument("--autocast", choices=("bf16",), default=None, help="bf16 autocast (default: fp32)")
    m.add_argument("--compile", action="store_true", help="torch.compile the model")
    m.add_argument("--profile", metavar="DIR", help="write a torch.profiler trace (trace.json) and top_ops.txt here")
    m.add_argument("--profile-steps", type=int, default=3, help="steps recorded by the profiler")
    m.add_argument(
        "--memory-snapshot",
        metavar="FILE",
        help="CUDA: allocator history pickle (pytorch.org/memory_viz); CPU: JSON of peak RSS + timeline",
    )
    m.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--peak-n", type=int, default=0, help="matmul size of the peak measurement (0: 2048 CPU, 8192 CUDA)")
    m.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    m.set_defaults(func=cmd_model)

    a = verbs.add_parser("allreduce", help="all-reduce algorithm / bus bandwidth over sizes (gloo on CPU, NCCL)")
    a.add_argument("--nproc", type=int, default=2, help="processes to spawn (ignored under torchrun)")
    a.add_argument("--sizes-mb", default="1,4,16,64,256", help="comma-separated message sizes in MB (10^6 bytes)")
    a.add_argument("--backend", choices=("gloo", "nccl"), default=None, help="default: nccl with CUDA, else gloo")
    a.add_argument("--warmup", type=int, default=3)
    a.add_argument("--iters", type=int, default=10)
    a.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    a.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    a.set_defaults(func=cmd_allreduce)


def cmd_model(args: argparse.Namespace) -> int:
    from scratchlm.bench.model import ModelBenchConfig, format_result, result_json, run_model_bench
    from scratchlm.io import atomic_write, check_writable

    cfg = ModelBenchConfig(
        preset=args.preset,
        batch=args.batch,
        seq_len=args.seq_len,
        mode=args.mode,
        warmup=args.warmup,
        steps=args.steps,
        precision=args.autocast or "fp32",
        compile=args.compile,
        device=args.device,
        profile_dir=args.profile,
        profile_steps=args.profile_steps,
        memory_snapshot=args.memory_snapshot,
        overrides=args.overrides,
        seed=args.seed,
        peak_n=args.peak_n,
    )
    if args.json:
        check_writable(args.json, "JSON result", file=True)
    result = run_model_bench(cfg)
    if "profile" in result:
        print(result["profile"]["table_text"])
        print()
    print(format_result(result))
    if args.json:
        with atomic_write(args.json, "w", encoding="utf-8") as f:
            f.write(result_json(result) + "\n")
    return 0


def cmd_allreduce(args: argparse.Namespace) -> int:
    from scratchlm.bench.collectives import AllReduceConfig, format_rows, parse_sizes, run_allreduce_bench
    from scratchlm.io import check_writable, write_json

    cfg = AllReduceConfig(
        nproc=args.nproc,
        sizes_mb=parse_sizes(args.sizes_mb),
        backend=args.backend,
        warmup=args.warmup,
        iters=args.iters,
        dtype=args.dtype,
    )
    if args.json:
        check_writable(args.json, "JSON result", file=True)
    result = run_allreduce_bench(cfg)
    if result is None:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    print(format_rows(result))
    if args.json:
        write_json(args.json, result)
    return 0
