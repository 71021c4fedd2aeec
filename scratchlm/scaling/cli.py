"""`scratchlm scaling fit | plan | sweep`: scaling laws from a table of runs, and IsoFLOP studies.

    scratchlm scaling fit --runs runs.jsonl --approach 3 --bootstrap 200 --predict 1e21 1e22 --out fit/
    scratchlm scaling fit --runs chinchilla.csv --drop-highest-loss 5 --approach 2 --out fit2/
    scratchlm scaling plan --budget 1e13 --sizes 5 --preset quickstart --seq-len 128 --vocab 2048 --spec-out s.toml
    scratchlm scaling sweep --budgets 1e12 3e12 1e13 --sizes 5 --preset quickstart --set data.train=t.bin --out runs/iso
    scratchlm scaling sweep --spec owt_cpu_study                 # configs/scaling/owt_cpu_study.toml

numpy, scipy, torch and matplotlib are imported inside the verbs only.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from scratchlm.config import add_config_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "scaling",
        help="scaling laws: fit runs (Chinchilla approaches 1-3), plan IsoFLOP sweeps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = p.add_subparsers(dest="verb", metavar="<verb>", required=True)

    f = verbs.add_parser("fit", help="fit a scaling law to a runs table; writes fit.json and plots")
    f.add_argument("--runs", type=Path, required=True, help="runs table: .jsonl, .csv, .json, or a sweep directory")
    f.add_argument("--approach", type=int, choices=(1, 2, 3), default=3, help="1 envelope, 2 IsoFLOP, 3 parametric")
    f.add_argument("--predict", type=float, nargs="*", default=[], metavar="C", help="compute budgets (FLOPs)")
    f.add_argument("--bootstrap", type=int, default=0, metavar="B", help="bootstrap resamples for intervals (0 = none)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", type=Path, required=True, help="output directory (fit.json + PNGs)")
    f.add_argument("--columns", default="", help="column mapping, e.g. N=params_nonembed,loss=best_val_loss")
    f.add_argument("--drop-highest-loss", type=int, default=0, metavar="K", help="leave out the K highest-loss runs")
    f.add_argument("--bins", type=int, default=20, help="approach 1: log-uniform compute bins")
    f.add_argument("--tol", type=float, default=0.25, help="approach 2: a slice spans C to C * (1 + tol)")
    f.add_argument("--allow-extrapolation", action="store_true", help="approach 2: keep minima outside a slice's sizes")
    f.add_argument("--model-preset", default=None, help="base model preset for predicted shapes (default: defaults)")
    f.add_argument("--vocab", type=int, default=None, help="vocab size of predicted shapes")
    f.add_argument("--seq-len", type=int, default=None, help="sequence length for predicted shapes' FLOPs")
    f.add_argument("--aspect", type=float, default=None, help="d_model / n_layers of predicted shapes (default 32)")
    f.set_defaults(func=cmd_fit)

    pl = verbs.add_parser("plan", help="candidate (N, D) runs along an IsoFLOP line, optionally as a sweep spec")
    pl.add_argument("--budget", type=float, nargs="+", default=None, metavar="C", help="training FLOPs per slice")
    _study_arguments(pl)
    pl.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (sets seq_len and context_length)")
    pl.add_argument("--vocab", type=int, default=None, help="vocab size (sets model.vocab_size)")
    pl.add_argument("--spec-out", type=Path, default=None, help="write a sweep spec TOML (scratchlm sweep run FILE)")
    pl.add_argument("--runs-dir", default=None, help="out_dir of the written spec (default: --out/runs)")
    pl.set_defaults(func=cmd_plan)

    sw = verbs.add_parser("sweep", help="train an IsoFLOP grid, collect runs.jsonl, fit approaches 2 and 3")
    sw.add_argument("--budgets", type=float, nargs="+", default=None, metavar="C", help="training FLOPs per slice")
    _study_arguments(sw)
    sw.add_argument("--parallel", type=int, default=None, help="training processes at once")
    sw.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples of the fits (default 200)")
    sw.set_defaults(func=cmd_sweep)


def _study_arguments(p) -> None:
    p.add_argument("--spec", default=None, help="study config: name in configs/scaling/ or a .toml file")
    p.add_argument("--sizes", type=int, default=None, help="model sizes per budget (default 5)")
    p.add_argument("--spread", type=float, default=None, help="sizes span [N0/spread, N0*spread] (default 4)")
    p.add_argument("--center", default=None, help="N0: 'chinchilla' (20 tokens/param) or a fit.json")
    p.add_argument("--aspect", type=float, default=None, help="d_model / n_layers of the shapes (default 32)")
    # --preset / --set: the training config every run starts from; --print-config prints the resolved study
    add_config_arguments(p.add_argument_group("training config of every run (configs/train/)"), "train")
    p.add_argument("--out", default=None, help="study directory (default runs/scaling)")


def _study_config(args: argparse.Namespace, budgets, extra: dict | None = None):
    from scratchlm.config import load_config, parse_overrides, parse_value
    from scratchlm.errors import ScratchLMError
    from scratchlm.scaling.config import StudyConfig
    from scratchlm.train.config import TrainConfig

    train_set = {}
    for item in args.overrides:
        if "=" not in item:
            raise ScratchLMError(f"--set {item!r} must look like key=value (e.g. optim.lr=3e-3)")
        parse_overrides(TrainConfig, [item])  # checks the key against the training config
        key, raw = item.split("=", 1)
        train_set[key.strip()] = parse_value(raw.strip())
    base = {
        "budgets": budgets,
        "sizes": args.sizes,
        "spread": args.spread,
        "center": args.center,
        "train_preset": args.preset,
        "out_dir": args.out,
        **(extra or {}),
    }
    base = {k: v for k, v in base.items() if v is not None}
    if args.aspect is not None:
        base["shape"] = {"aspect_ratio": args.aspect}
    study = load_config(StudyConfig, "scaling", args.spec, base=base)
    study.train_set = {**study.train_set, **train_set}
    return study


def _print_config(study) -> int:
    from scratchlm.config import to_toml

    print(to_toml(study), end="")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from scratchlm.scaling.plan import format_plan, plan_study, sweep_spec, write_spec

    extra = {}
    study = _study_config(args, args.budget, extra)
    if args.seq_len is not None:
        study.train_set.update({"seq_len": args.seq_len, "model.context_length": args.seq_len})
    if args.vocab is not None:
        study.train_set["model.vocab_size"] = args.vocab
    if args.print_config:
        return _print_config(study)
    if args.spec_out:
        from scratchlm.io import check_writable

        check_writable(args.spec_out, "sweep spec", file=True)
    rows = plan_study(study)
    print(format_plan(rows))
    if args.spec_out:
        runs_dir = args.runs_dir or str(Path(study.out_dir) / "runs")
        write_spec(sweep_spec(study, rows, runs_dir), args.spec_out)
        print(f"wrote {args.spec_out} (run it with: scratchlm sweep run {args.spec_out})")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from scratchlm.scaling.study import run_study

    extra = {"parallel": args.parallel, "bootstrap": args.bootstrap}
    study = _study_config(args, args.budgets, {k: v for k, v in extra.items() if v is not None})
    if args.print_config:
        return _print_config(study)
    summary = run_study(study)
    for name, fit in summary["fits"].items():
        if "error" in fit:
            print(f"{name}: not fitted: {fit['error']}")
        else:
            a = fit["a"]
            ci = f" (95% CI {a['ci95'][0]:.3f}-{a['ci95'][1]:.3f})" if a.get("ci95") else ""
            print(f"{name}: N_opt ~ C^{a['value']:.3f}{ci} -> {Path(study.out_dir) / fit['dir']}")
    print(f"runs table: {summary['runs_table']} ({summary['runs']} runs, {len(summary['failed'])} failed)")
    return 1 if summary["failed"] else 0


def _columns(spec: str) -> dict[str, str]:
    from scratchlm.errors import ScratchLMError

    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if "=" not in item:
            raise ScratchLMError(f"--columns entry {item!r} must look like FIELD=column (e.g. N=params)")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _check_fit_args(args: argparse.Namespace) -> None:
    """The numeric flags of `scaling fit`, each checked with its name before any work."""
    from scratchlm.errors import ScratchLMError

    checks = [
        ("--drop-highest-loss", args.drop_highest_loss, args.drop_highest_loss >= 0, ">= 0"),
        ("--bootstrap", args.bootstrap, args.bootstrap >= 0, ">= 0"),
        ("--bins", args.bins, args.bins >= 1, ">= 1"),
        ("--tol", args.tol, 0 <= args.tol < math.inf, ">= 0"),
        ("--vocab", args.vocab, args.vocab is None or args.vocab >= 1, ">= 1"),
        ("--seq-len", args.seq_len, args.seq_len is None or args.seq_len >= 1, ">= 1"),
        ("--aspect", args.aspect, args.aspect is None or 0 < args.aspect < math.inf, "> 0"),
    ]
    checks += [("--predict", c, 0 < c < math.inf, "> 0 (FLOPs)") for c in args.predict]
    for flag, value, ok, rule in checks:
        if not ok:
            raise ScratchLMError(f"{flag} must be {rule}, got {value}")


def cmd_fit(args: argparse.Namespace) -> int:
    import dataclasses

    from scratchlm.config import load_config
    from scratchlm.io import check_writable
    from scratchlm.model.config import ModelConfig
    from scratchlm.scaling.fit import fit_runs, write_fit
    from scratchlm.scaling.runs import load_runs
    from scratchlm.scaling.shapes import ShapeRule

    _check_fit_args(args)
    runs = load_runs(args.runs, _columns(args.columns), args.drop_highest_loss)
    check_writable(args.out / "fit.json", "fit output directory")  # before the fit and its bootstrap
    result = fit_runs(runs, args.approach, args.bootstrap, args.seed, args.bins, args.tol, args.allow_extrapolation)
    base = load_config(ModelConfig, "model", args.model_preset) if args.model_preset else ModelConfig()
    if args.vocab:
        base = dataclasses.replace(base, vocab_size=args.vocab)
    if args.seq_len:
        base = dataclasses.replace(base, context_length=max(base.context_length, args.seq_len))
    rule = ShapeRule(aspect_ratio=args.aspect) if args.aspect else ShapeRule()
    data = write_fit(result, args.out, args.predict, base, args.seq_len, rule)
    print(format_fit(data))
    print(f"wrote {args.out / 'fit.json'} and {', '.join(data['plots'])}")
    return 0


def format_fit(data: dict) -> str:
    """A short human summary of fit.json."""

    def q(x: dict, fmt: str = ".4g") -> str:
        s = f"{x['value']:{fmt}}"
        if x.get("se") is not None:
            s += f" ± {x['se']:{fmt}} (95% CI {x['ci95'][0]:{fmt}} - {x['ci95'][1]:{fmt}})"
        return s

    lines = [f"approach {data['approach']}: {data['method']}", f"runs used: {data['runs']['used']}"]
    if data["runs"]["excluded"]:
        lines.append(f"runs excluded: {len(data['runs']['excluded'])} (see fit.json runs.excluded)")
    for k, v in data.get("params", {}).items():
        lines.append(f"  {k:6s} = {q(v)}")
    al = data["allocation"]
    lines.append(f"  N_opt = {al['k_N']['value']:.4g} C^{q(al['a'], '.4f')}")
    lines.append(f"  D_opt = {al['k_D']['value']:.4g} C^{q(al['b'], '.4f')}")
    for p in data["predictions"]:
        line = f"  C = {p['C']:.3g}: N_opt {q(p['N_opt'], '.3g')}, D_opt {q(p['D_opt'], '.3g')}"
        if "loss" in p:
            line += f", loss {q(p['loss'], '.4f')}"
        lines.append(line)
        s, pr = p["shape"], p["preset"]
        lines.append(
            f"    rule shape: d_model {s['d_model']}, {s['n_layers']} layers, {s['n_heads']} heads, "
            f"{s['params']:,} params, {s['tokens_for_budget']:.3g} tokens for C"
            + (f"; nearest preset: {pr['preset']} ({pr['params']:,} params)" if pr else "")
        )
    lines.append(f"  time: {data['timings_s']}")
    return "\n".join(lines)
