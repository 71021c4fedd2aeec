"""`scratchlm align dpo | grpo | ppo | expert-iter`: alignment stages writing a run directory with a model directory.

scratchlm align dpo --model smollm2-135m-instruct --data ../shared/data/instruct/hh_rlhf_harmless_test.jsonl.gz \
    --out runs/dpo --set steps=40 --set beta=0.1
scratchlm align dpo --resume runs/dpo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scratchlm.config import add_config_arguments, config_from_args, to_toml


def register(sub) -> None:
    p = sub.add_parser("align", help="align a model: DPO on preference pairs, GRPO with a verifier")
    verbs = p.add_subparsers(dest="verb", metavar="<verb>", required=True)
    d = verbs.add_parser("dpo", help="direct preference optimisation (also ipo / simpo: --set kind=...)")
    add_config_arguments(d, "align")
    d.add_argument("--model", help="policy: pretrained name, model or run directory (--set model=...)")
    d.add_argument("--data", help="JSONL(.gz) of preference pairs (--set data=...)")
    d.add_argument("--out", help="run directory (--set out_dir=...)")
    d.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    d.set_defaults(func=cmd_dpo)
    s = verbs.add_parser("sft", help="supervised fine-tuning on chats (assistant tokens only, packed rows)")
    add_config_arguments(s, "align")
    s.add_argument("--model", help="pretrained name, model or run directory (--set model=...)")
    s.add_argument("--data", help='JSONL(.gz) of {"messages"} or {"prompt", "response"} (--set data=...)')
    s.add_argument("--out", help="run directory (--set out_dir=...)")
    s.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    s.set_defaults(func=cmd_sft)
    for verb, help_, func in (
        ("grpo", "GRPO / REINFORCE from a verifier, rollouts through the engine", cmd_grpo),
        ("ppo", "PPO from a verifier: value head, GAE, clipped policy and value losses", cmd_ppo),
        ("expert-iter", "expert iteration: sample, keep verified-correct, SFT", cmd_expert_iter),
    ):
        g = verbs.add_parser(verb, help=help_)
        add_config_arguments(g, "align")
        g.add_argument("--model", help="policy: pretrained name, model or run directory (--set model=...)")
        g.add_argument("--prompts", help='JSONL(.gz) of {"prompt", "answer"} (--set prompts=...)')
        g.add_argument("--reward", help="verifier: gsm8k | mmlu | r1 | format | math | module:function")
        g.add_argument("--out", help="run directory (--set out_dir=...)")
        g.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
        g.set_defaults(func=func)


def _resolve(cls, args, resume_dir: Path | None):
    from scratchlm.config import load_config
    from scratchlm.errors import ScratchLMError

    if resume_dir is not None:
        snapshot = resume_dir / "config.toml"
        if not snapshot.is_file():
            raise ScratchLMError(f"cannot resume {resume_dir}: no config.toml there (not an align run directory?)")
        return load_config(cls, "align", str(snapshot), args.overrides, base={"out_dir": str(resume_dir)})
    return config_from_args(cls, "align", args, {"model": args.model, "data": args.data, "out_dir": args.out})


def _prepare(cls, args, extra: dict):
    from scratchlm.errors import ScratchLMError
    from scratchlm.io import atomic_write

    if args.resume is not None:
        cfg = _resolve(cls, args, args.resume)
    else:
        cfg = config_from_args(cls, "align", args, {"out_dir": args.out, **extra})
    if args.print_config:
        print(to_toml(cfg), end="")
        return None
    if not cfg.prompts:
        raise ScratchLMError("no prompts: pass --prompts FILE.jsonl (or --set prompts=...)")
    out = Path(cfg.out_dir)
    if args.resume is None:
        if out.exists() and any(out.iterdir()):
            raise ScratchLMError(f"{out} exists and is not empty: choose another --out, or --resume it")
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "config.toml", "w") as f:
            f.write(to_toml(cfg))
    return cfg


def _verifier_command(module: str, config: str, trainer: str):
    """The `func` of a verifier-trained verb (grpo / ppo / expert-iter): same flags, same run setup."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        mod = importlib.import_module(f"scratchlm.align.{module}")
        flags = {"model": args.model, "prompts": args.prompts, "reward": args.reward}
        cfg = _prepare(getattr(mod, config), args, flags)
        if cfg is not None:
            summary = getattr(mod, trainer)(cfg, resume=args.resume is not None)
            print(json.dumps({"evals": summary["evals"], "model_dir": summary["model_dir"]}, indent=1))
        return 0

    return run


cmd_grpo = _verifier_command("grpo", "GRPOConfig", "train_grpo")
cmd_ppo = _verifier_command("ppo", "PPOConfig", "train_ppo")
cmd_expert_iter = _verifier_command("expert_iter", "ExpertIterConfig", "train_expert_iter")


def cmd_dpo(args: argparse.Namespace) -> int:
    from scratchlm.align.dpo import DPOConfig, train_dpo

    cfg = _prepare_data_run(DPOConfig, args, "preference data")
    if cfg is None:
        return 0
    summary = train_dpo(cfg, resume=args.resume is not None)
    print(json.dumps({"evals": summary["evals"], "model_dir": summary["model_dir"]}, indent=1))
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from scratchlm.align.sft import SFTConfig, train_sft

    cfg = _prepare_data_run(SFTConfig, args, "SFT data")
    if cfg is None:
        return 0
    summary = train_sft(cfg, resume=args.resume is not None)
    print(json.dumps({"examples": summary["examples"], "model_dir": summary["model_dir"]}, indent=1))
    return 0


def _prepare_data_run(cls, args, what: str):
    """The config of a run over a --data file (None after --print-config); a new run directory gets config.toml."""
    from scratchlm.errors import ScratchLMError
    from scratchlm.io import atomic_write

    cfg = _resolve(cls, args, args.resume)
    if args.print_config:
        print(to_toml(cfg), end="")
        return None
    if not cfg.data:
        raise ScratchLMError(f"no {what}: pass --data FILE.jsonl (or --set data=...)")
    out = Path(cfg.out_dir)
    if args.resume is None:
        if out.exists() and any(out.iterdir()):
            raise ScratchLMError(f"{out} exists and is not empty: choose another --out, or --resume it")
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "config.toml", "w") as f:
            f.write(to_toml(cfg))
    return cfg
