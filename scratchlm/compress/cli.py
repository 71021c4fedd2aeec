"""`scratchlm compress quantize | prune | prune-structured`: a model in, a smaller model directory out.

scratchlm compress quantize --model smollm2-135m-instruct --bits 8 --out models/smol-int8
scratchlm compress quantize --model smollm2-135m-instruct --bits 4 --group-size 64 --method gptq \
    --calib ../shared/data/text/owt_mini.txt --out models/smol-gptq4
scratchlm compress quantize --model smollm2-135m-instruct --bits 4 --group-size 64 --method awq \
    --calib ../shared/data/text/owt_mini.txt --out models/smol-awq4
scratchlm compress prune --model runs/mine --sparsity 0.5 --scope layer --out models/mine-50
scratchlm compress prune-structured --model smollm2-135m-instruct --calib text.txt --d-ff 1024 --n-layers 25 \
    --out models/smol-small
scratchlm serve --model models/smol-int8          # every model-taking command loads the result
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("compress", help="quantise or prune a model into a new model directory")
    verbs = p.add_subparsers(dest="verb", metavar="<verb>")

    def common(v, calib_required: bool = False) -> None:
        v.add_argument("--model", required=True, help="run directory, model directory, .gguf or pretrained name")
        v.add_argument("--out", required=True, help="the new model directory (must not exist, or --overwrite)")
        v.add_argument("--overwrite", action="store_true")
        v.add_argument("--calib", required=calib_required, default=None, help="calibration text file (UTF-8)")
        v.add_argument("--calib-seqs", type=int, default=128, help="calibration sequences")
        v.add_argument("--calib-len", type=int, default=512, help="tokens per calibration sequence")

    q = verbs.add_parser("quantize", help="weight-only int8 / int4 (round to nearest, GPTQ or AWQ)")
    common(q)
    q.add_argument("--bits", type=int, choices=[4, 8], default=8)
    q.add_argument("--group-size", type=int, default=64, help="int4: inputs per scale / zero point")
    q.add_argument("--method", choices=["rtn", "gptq", "awq"], default="rtn")
    q.add_argument(
        "--act-order",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="GPTQ: columns by decreasing Hessian diagonal (default; --no-act-order for file order)",
    )
    q.add_argument("--quantize-head", action="store_true", help="also the output head (untied)")
    q.set_defaults(func=quantize)

    u = verbs.add_parser("prune", help="unstructured magnitude pruning or 2:4 sparsity (weights zeroed)")
    common(u)
    u.add_argument("--sparsity", type=float, default=None, help="fraction of block-linear weights to zero")
    u.add_argument("--scope", choices=["global", "layer"], default="layer")
    u.add_argument("--pattern", choices=["2:4"], default=None, help="semi-structured 2:4 instead of --sparsity")
    u.add_argument("--include", default=None, help="regex over linear names (default: every block linear)")
    u.set_defaults(func=prune)

    s = verbs.add_parser("prune-structured", help="drop MLP neurons, heads, layers (Minitron): a smaller config")
    common(s, calib_required=True)
    s.add_argument("--d-ff", type=int, default=None)
    s.add_argument("--n-heads", type=int, default=None)
    s.add_argument("--n-kv-heads", type=int, default=None)
    s.add_argument("--n-layers", type=int, default=None)
    s.add_argument("--layer-method", choices=["cosine", "loss"], default="cosine")
    s.set_defaults(func=prune_structured)


def _calibration(args: argparse.Namespace, chat):
    """(calib_seqs, calib_len) token ids from --calib, or None without one; errors before any work."""
    from scratchlm.compress.structured import calibration_tokens
    from scratchlm.errors import ScratchLMError
    from scratchlm.io import check_input_file

    if args.calib is None:
        return None
    if args.calib_seqs < 1 or args.calib_len < 2:
        raise ScratchLMError("--calib-seqs must be >= 1 and --calib-len >= 2")
    path = check_input_file(args.calib, "calibration text")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ScratchLMError(f"{path} is not UTF-8 text ({e})") from None
    return calibration_tokens(chat.tokenizer.encode(text), args.calib_seqs, args.calib_len)


def _save(model, chat, args: argparse.Namespace, what: dict) -> None:
    from pathlib import Path

    from scratchlm.compress.quant import model_bytes
    from scratchlm.errors import ScratchLMError
    from scratchlm.model.model_dir import save_model_dir

    if Path(args.out).exists() and not args.overwrite:
        raise ScratchLMError(f"{args.out} exists: choose another --out or pass --overwrite")
    save_model_dir(model, chat, args.out, provenance={"source": str(args.model), **what}, overwrite=args.overwrite)
    print(f"wrote {args.out} ({model_bytes(model) / 2**20:.1f} MiB of tensors)")


def quantize(args: argparse.Namespace) -> int:
    from scratchlm.compress.quant import QuantConfig, quantize_model
    from scratchlm.errors import ScratchLMError
    from scratchlm.model.model_dir import load_model

    cfg = QuantConfig(args.bits, args.group_size, args.method, quantize_head=args.quantize_head)
    cfg.act_order = args.act_order
    cfg.validate()
    if args.method in ("gptq", "awq") and args.calib is None:
        raise ScratchLMError(f"--method {args.method} needs --calib TEXT_FILE (calibration data)")
    model, chat = load_model(args.model)
    calib = _calibration(args, chat) if args.method in ("gptq", "awq") else None
    quantize_model(model, cfg, calib=calib)
    _save(model, chat, args, {"quantization": model.quantization | {"modules": len(model.quantization["modules"])}})
    return 0


def prune(args: argparse.Namespace) -> int:
    from scratchlm.compress.prune import magnitude_prune, semi_structured_24, sparsity_report
    from scratchlm.errors import ScratchLMError
    from scratchlm.model.model_dir import load_model

    if (args.sparsity is None) == (args.pattern is None):
        raise ScratchLMError("give exactly one of --sparsity FRACTION or --pattern 2:4")
    model, chat = load_model(args.model)
    if args.pattern:
        semi_structured_24(model, include=args.include)
    else:
        magnitude_prune(model, args.sparsity, scope=args.scope, include=args.include)
    zeros = sparsity_report(model, include=args.include)["sparsity"]
    what = {"pruning": {"sparsity": args.sparsity, "pattern": args.pattern, "scope": args.scope, "zeros": zeros}}
    _save(model, chat, args, what)
    print(f"block-linear sparsity {100 * zeros:.1f}%")
    return 0


def prune_structured(args: argparse.Namespace) -> int:
    from scratchlm.compress.structured import prune_structured as shrink_model
    from scratchlm.model.model_dir import load_model

    model, chat = load_model(args.model)
    calib = _calibration(args, chat)
    small = shrink_model(
        model,
        calib,
        d_ff=args.d_ff,
        n_heads=args.n_heads,
        n_kv_heads=args.n_kv_heads,
        n_layers=args.n_layers,
        layer_method=args.layer_method,
    )
    c = small.config
    _save(small, chat, args, {"structured": {"d_ff": c.d_ff, "n_heads": c.n_heads, "n_layers": c.n_layers}})
    return 0
