"""GRPO, PPO, expert iteration and SFT on a verifiable task a small model can learn on a CPU: the sum of three digits.

    nice python -m benchmarks.align_grpo            # ~4-5 min on 2 busy cores; writes benchmarks/results/align_grpo.md

Why not SmolLM2-135M-Instruct: on this shared 2-core machine its engine produced 32 greedy answers of 24 tokens
in 98 s (and 32 samples in 153 s), so one GRPO step of 8 prompts x 8 samples plus its backward would take
minutes. Instead a 0.7M-parameter byte-level scratchlm model is first taught the task's format
("3+9+4=" -> "16<eos>") by a short SFT on 100 worked problems (to a deliberately modest accuracy), then,
from that same base:
  grpo         `align.grpo.train_grpo`: prompts x G samples from the engine, GRPO-clip, 2 epochs per batch
  ppo          `align.ppo.train_ppo`: the same number of samples, one per prompt, value head + GAE
  expert-iter  `align.expert_iter.train_expert_iter`: the same number of samples, SFT on the correct ones
  sft          more SFT on the task's ground-truth answers, as many examples as the RL arms draw samples
Why this task: its 1000 problems "a+b+c=" leave ~300 held out that no arm ever trains on (n = 300 makes the
95% Wilson interval about +-0.05), held out by digit multiset, so none is a reordering of a training problem,
and ~600 others that the RL arms only meet through the verifier: a held-out gain is the policy learning to
add, not memorising answers. (Single-digit "a+b=" had only 100 problems: 30 held out could not tell a gain
from noise; two-digit "a+b=" was at 9% held-out accuracy after 1400 SFT steps here, too slow for 2 cores.)
Greedy accuracy before -> after with 95% Wilson intervals, a two-proportion z-test and an exact McNemar test;
the GRPO reward curve and the held-out accuracy per arm as a PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from scratchlm.align.expert_iter import ExpertIterConfig, SFTLoss, SFTTargets, train_expert_iter
from scratchlm.align.grpo import GRPOConfig, evaluate, load_tasks, train_grpo
from scratchlm.align.ppo import PPOConfig, train_ppo
from scratchlm.align.rewards import reward_function
from scratchlm.align.rollout import RolloutSampler, rollout_batch
from scratchlm.align.tasks import write_task_jsonl
from scratchlm.errors import ScratchLMError
from scratchlm.model.config import ModelConfig
from scratchlm.model.model_dir import load_model, save_model_dir
from scratchlm.model.transformer import TransformerLM
from scratchlm.tokenizer.chat import ChatTokenizer
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.train.config import OptimConfig, ScheduleConfig
from scratchlm.train.optim import build_optimizer
from scratchlm.train.schedules import Schedule
from scratchlm.train.step import train_step

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "align_grpo"
RESULTS = REPO / "benchmarks" / "results"


def byte_chat() -> ChatTokenizer:
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
    return ChatTokenizer(tok, eos_token="<|endoftext|>")


def sft(model, chat, rows, steps, lr, batch=32, seed=0) -> list[float]:
    """SFT on (prompt, answer) rows through train_step; returns the losses."""
    eos = chat.eos_id
    opt = build_optimizer(model, OptimConfig(lr=lr, weight_decay=0.0))
    sched = Schedule(opt, ScheduleConfig(name="constant"), steps)
    rng = random.Random(seed)
    losses = []
    model.train()
    for s in range(steps):
        pick = [rows[rng.randrange(len(rows))] for _ in range(batch)]
        p = [chat.encode(r["prompt"], add_special=False) for r in pick]
        o = [chat.encode(r["answer"], add_special=False) + [eos] for r in pick]
        b = rollout_batch(p, o, eos)
        r = train_step(model, [(b["input_ids"], SFTTargets(b["labels"], b["response_mask"]))], SFTLoss(), opt, sched,
                       step=s, grad_clip=1.0)  # fmt: skip
        losses.append(r.loss)
    model.eval()
    return losses


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sft-examples", type=int, default=100)
    ap.add_argument("--sft-steps", type=int, default=100)
    ap.add_argument("--grpo-steps", type=int, default=100)
    ap.add_argument("--held-out", type=int, default=300)
    ap.add_argument("--grpo-lr", type=float, default=3e-4)
    ap.add_argument("--skip", default="", help="comma list of arms to skip: grpo,ei,ppo,sft")
    args = ap.parse_args()
    torch.set_num_threads(1)  # on a busy 2-core machine one thread is ~10x faster than two
    t_start = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    chat = byte_chat()
    held_rows, train_rows = split_problems(args.held_out)
    rl_rows = train_rows[args.sft_examples :]  # trained on from the verifier only, never demonstrated
    write_task_jsonl(train_rows, WORK / "train.jsonl")
    write_task_jsonl(held_rows, WORK / "held.jsonl")
    write_task_jsonl(rl_rows, WORK / "rl_only.jsonl")
    report: dict = {"task": "the sum of three digits 'a+b+c=' (byte-level), reward: gsm8k final number",
                    "problems": len(held_rows) + len(train_rows), "train_prompts": len(train_rows),
                    "held_out": len(held_rows), "rl_only": len(rl_rows), "split": "by digit multiset"}  # fmt: skip

    # ---- the base: a tiny model taught the format on 100 worked problems
    base_dir = WORK / "base"
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=chat.tokenizer.vocab_size, context_length=32, d_model=128, n_layers=3, n_heads=4)
    model = TransformerLM(cfg).eval()
    t0 = time.perf_counter()
    losses = sft(model, chat, train_rows[: args.sft_examples], args.sft_steps, lr=3e-3)
    report["base"] = {"params": sum(p.numel() for p in model.parameters()), "d_model": cfg.d_model,
                      "n_layers": cfg.n_layers, "sft_examples": args.sft_examples,
                      "sft_steps": args.sft_steps, "sft_loss_first_last": [losses[0], losses[-1]],
                      "seconds": time.perf_counter() - t0}  # fmt: skip
    save_model_dir(model, chat, base_dir, overwrite=True, provenance={"stage": "benchmark base"})
    reward = reward_function("gsm8k")
    held, _ = load_tasks(str(WORK / "held.jsonl"), chat, 24)
    rl_only, _ = load_tasks(str(WORK / "rl_only.jsonl"), chat, 24)
    sampler = RolloutSampler(model, chat, kv_cache_mb=16, max_num_seqs=128)
    report["base"]["eval"] = evaluate(sampler, rl_only, reward, 3, batch=128)
    report["base"]["held_out"] = held_out_eval(sampler, held, reward)

    def held_out_after(run_dir: Path) -> dict:
        m, _ = load_model(run_dir / "model", progress=False)
        return held_out_eval(RolloutSampler(m, chat, kv_cache_mb=16, max_num_seqs=128), held, reward)

    print("base", json.dumps(report["base"]), flush=True)

    G, P = 8, 16
    skip = set(filter(None, args.skip.split(",")))
    common = dict(prompts=str(WORK / "train.jsonl"), eval_prompts=str(WORK / "rl_only.jsonl"), reward="gsm8k",
                  max_tokens=3, temperature=1.0, seed=0, kv_cache_mb=16)  # fmt: skip
    if "grpo" not in skip:
        out = WORK / "grpo"
        _clear(out)
        g = GRPOConfig(model=str(base_dir), out_dir=str(out), steps=args.grpo_steps, prompts_per_step=P, group_size=G,
                       epochs_per_batch=2, train_batch=64, micro_batch=64, lr=args.grpo_lr, cliprange=0.2,
                       eval_every=10, checkpoint_every=0, **common)  # fmt: skip
        t0 = time.perf_counter()
        s = train_grpo(g)
        report["grpo"] = {"evals": s["evals"], "seconds": time.perf_counter() - t0,
                          "step_seconds_median": s["step_seconds_median"], "config": _cfg(g),
                          "held_out": held_out_after(out)}  # fmt: skip
        print("grpo", json.dumps(s["evals"]), flush=True)
    if "ei" not in skip:
        out = WORK / "ei"
        _clear(out)
        rounds = max(1, args.grpo_steps // 5)
        e = ExpertIterConfig(model=str(base_dir), out_dir=str(out), rounds=rounds, prompts_per_round=P * 5,
                             group_size=G, sft_steps=20, batch_size=32, lr=1e-3, **common)  # fmt: skip
        t0 = time.perf_counter()
        s = train_expert_iter(e)
        report["expert_iter"] = {
            "evals": s["evals"],
            "seconds": time.perf_counter() - t0,
            "config": _cfg(e),
            "held_out": held_out_after(out),
        }
        print("ei", json.dumps(s["evals"]), flush=True)
    if "ppo" not in skip:
        out = WORK / "ppo"
        _clear(out)
        pc = PPOConfig(model=str(base_dir), out_dir=str(out), steps=args.grpo_steps, prompts_per_step=P * G,
                       group_size=1,
                       epochs_per_batch=2, train_batch=64, micro_batch=64, lr=args.grpo_lr, cliprange=0.2,
                       checkpoint_every=0, **common)  # fmt: skip
        t0 = time.perf_counter()
        s = train_ppo(pc)
        report["ppo"] = {"evals": s["evals"], "seconds": time.perf_counter() - t0, "config": _cfg(pc),
                         "held_out": held_out_after(out)}  # fmt: skip
        print("ppo", json.dumps(s["evals"]), flush=True)
    if "sft" not in skip:
        m, _ = load_model(base_dir, progress=False)
        steps = max(1, args.grpo_steps // 5) * 20
        t0 = time.perf_counter()
        sft(m, chat, train_rows, steps, lr=1e-3, seed=1)
        s2 = RolloutSampler(m, chat, kv_cache_mb=16, max_num_seqs=128)
        report["sft_more"] = {"steps": steps, "batch": 32, "lr": 1e-3, "examples": "all training problems",
                              "eval": evaluate(s2, rl_only, reward, 3, batch=128),
                              "held_out": held_out_eval(s2, held, reward),
                              "seconds": time.perf_counter() - t0}  # fmt: skip
        print("sft", json.dumps(report["sft_more"]["eval"]), flush=True)
    old = WORK / "report.json"
    if skip and old.is_file():  # a partial rerun keeps the other arms' figures
        report = {**json.loads(old.read_text()), **report}
    report["seconds"] = time.perf_counter() - t_start
    write_text_atomic(old, json.dumps(report, indent=1))
    write_results(report)


def split_problems(held_out: int) -> tuple[list[dict], list[dict]]:
    """Every sum of three digits "a+b+c=" (1000 problems) as (held-out, training) rows. Held out by digit
    multiset: "3+9+4=" goes with "4+3+9=" and every other order, so no held-out sum is a reordering of a
    training one; whole multisets are taken until `held_out` problems are reached."""
    groups: dict[tuple[int, ...], list[dict]] = {}
    for a in range(10):
        for b in range(10):
            for c in range(10):
                groups.setdefault(tuple(sorted((a, b, c))), []).append(
                    {"prompt": f"{a}+{b}+{c}=", "answer": str(a + b + c)}
                )
    keys = sorted(groups)
    random.Random(0).shuffle(keys)
    held, train = [], []
    for k in keys:
        (held if len(held) < held_out else train).extend(groups[k])
    random.Random(1).shuffle(held)
    random.Random(2).shuffle(train)  # the base's demonstrations are the first rows
    return held, train


def held_out_eval(sampler, tasks, reward_fn, max_tokens: int = 3, batch: int = 128) -> dict:
    """`evaluate`'s greedy accuracy and Wilson interval, plus which problems were solved (for the paired test)."""
    from scratchlm.align.pg_losses import safe_reward

    e = evaluate(sampler, tasks, reward_fn, max_tokens, batch=batch)
    hits = []
    for i in range(0, len(tasks), batch):  # the same greedy decode in the same batches as `evaluate`
        chunk = tasks[i : i + batch]
        ro = sampler.sample([t.prompt_ids for t in chunk], 1, max_tokens, temperature=0.0)
        hits += [int(safe_reward(reward_fn, x, t.answer)[0] >= 1.0) for t, x in zip(chunk, ro.texts, strict=True)]
    if sum(hits) != round(e["accuracy"] * len(tasks)):
        raise ScratchLMError(f"per-problem hits {sum(hits)} disagree with evaluate's accuracy {e['accuracy']}")
    return {**e, "correct": hits}


def mcnemar_p(before: list[int], after: list[int]) -> float:
    """Two-sided exact McNemar p-value: the problems solved only after vs only before, Binomial(b + c, 1/2)."""
    b = sum(a and not x for x, a in zip(before, after, strict=True))
    c = sum(x and not a for x, a in zip(before, after, strict=True))
    k, n = min(b, c), b + c
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0


def _opt_steps(c: dict) -> int:
    return c["prompts_per_step"] * c["group_size"] // (c["train_batch"] or c["prompts_per_step"] * c["group_size"])


def _clear(out: Path) -> None:
    import shutil

    if out.exists():
        shutil.rmtree(out)


def _cfg(c) -> dict:
    from dataclasses import asdict

    return {k: v for k, v in asdict(c).items() if k not in ("prompts", "eval_prompts", "out_dir", "model")}


def _fmt(e: dict) -> str:
    lo, hi = e["ci95"]
    return f"{e['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"


def two_proportion_p(before: dict, after: dict) -> float:
    """Two-sided p-value of the pooled two-proportion z-test that two accuracies differ."""
    n1, n2 = before["n"], after["n"]
    pooled = (before["accuracy"] * n1 + after["accuracy"] * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (after["accuracy"] - before["accuracy"]) / se
    return math.erfc(abs(z) / math.sqrt(2))


def _gain(before: dict, after: dict) -> str:
    ps = [two_proportion_p(before, after)]
    if "correct" in before and "correct" in after:
        ps.append(mcnemar_p(before["correct"], after["correct"]))
    sig = "yes" if max(ps) < 0.05 else "no"
    return f"{after['accuracy'] - before['accuracy']:+.3f}; p {' / '.join(f'{p:.0e}' for p in ps)}: {sig}"


def _arms(report: dict) -> list[tuple[str, str, str, str, dict, dict, dict, float]]:
    """(name, label, prompts drawn, samples drawn, verifier-only before, after, held-out after, seconds) per arm run."""
    out = []
    if "grpo" in report:
        g, c = report["grpo"], report["grpo"]["config"]
        n = c["steps"] * c["prompts_per_step"]
        out.append(("GRPO", f"GRPO (GRPO-clip {c['cliprange']}, G={c['group_size']}, {c['steps']} steps x "
                    f"{c['epochs_per_batch']} epochs x {_opt_steps(c)} optimizer steps, lr {c['lr']})",
                    f"{n} x {c['group_size']}", str(n * c["group_size"]), g["evals"][0], g["evals"][-1],
                    g["held_out"], g["seconds"]))  # fmt: skip
    if "expert_iter" in report:
        e, c = report["expert_iter"], report["expert_iter"]["config"]
        n = c["rounds"] * c["prompts_per_round"]
        out.append(("expert iteration", f"expert iteration ({c['rounds']} rounds x {c['sft_steps']} SFT steps of "
                    f"{c['batch_size']}, lr {c['lr']})", f"{n} x {c['group_size']}", str(n * c["group_size"]),
                    e["evals"][0], e["evals"][-1], e["held_out"], e["seconds"]))  # fmt: skip
    if "ppo" in report:
        e, c = report["ppo"], report["ppo"]["config"]
        n = c["steps"] * c["prompts_per_step"]
        out.append(("PPO", f"PPO (value head, GAE lam {c['lam']}, {c['steps']} steps x {c['epochs_per_batch']} "
                    f"epochs x {_opt_steps(c)} optimizer steps, lr {c['lr']})", f"{n} x {c['group_size']}",
                    str(n * c["group_size"]), e["evals"][0], e["evals"][-1], e["held_out"], e["seconds"]))  # fmt: skip
    if "sft_more" in report:
        s = report["sft_more"]
        out.append(("SFT", f"SFT on the ground-truth solutions of all {report['train_prompts']} training problems "
                    f"({s['steps']} steps x {s['batch']}, lr {s['lr']})", "-", f"- ({s['steps'] * s['batch']} "
                    "examples)", report["base"]["eval"], s["eval"], s["held_out"], s["seconds"]))  # fmt: skip
    return out


def write_results(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / "align_grpo.png"
    base = report["base"]
    hb = base["held_out"]
    lines = [
        "# GRPO, PPO, expert iteration and SFT on the sum of three digits (CPU)",
        "",
        f"Command: `nice .venv/bin/python -m benchmarks.align_grpo` (2 shared CPU cores, fp32; "
        f"{report['seconds']:.0f} s wall in all).",
        "",
        f"Task: {report['task']}. The {report['problems']} problems split into {base['sft_examples']} SFT "
        f"demonstrations, {report['rl_only']} problems the RL arms see only through the verifier (prompt + reward, "
        f"never a solution) and {report['held_out']} held-out problems no arm trains on, held out by digit multiset "
        "(every order of a held-out triple is held out: none is a reordering of a training problem). The RL arms "
        f"draw their prompts from the {report['train_prompts']} training problems (demonstrations + verifier-only); "
        "the SFT "
        "arm trains on the ground-truth answers of the same problems (so the verifier-only column is not unseen "
        "for it). Greedy decoding; accuracy with a 95% Wilson interval (n = the number of problems).",
        "",
        f"Base: a {base['params'] / 1e6:.2f}M-parameter byte-level scratchlm model (d_model {base['d_model']}, "
        f"{base['n_layers']} layers) taught the format by SFT on the {base['sft_examples']} demonstrations for "
        f"{base['sft_steps']} steps of 32 (deliberately short: a weak start the verifier can improve). "
        "SmolLM2-135M-Instruct was not used: on these 2 shared cores its engine took 98 s for 32 greedy answers "
        "of 24 tokens and 153 s for 32 samples, minutes per GRPO step against a ~10 min budget for everything.",
        "",
        "Held-out gain: after - before; p: two-sided p-values of a pooled two-proportion z-test / of an exact "
        "McNemar test on the same problems before and after (paired: the problems only one of the two models "
        "solves); 'yes' = both below 0.05. One run, one seed: the table shows that each arm's held-out gain is "
        "real, not which arm is best (the gaps between the RL arms were not tested and moved between versions of "
        "this split).",
        "",
        f"| arm | prompts x samples | samples drawn | verifier-only (n={report['rl_only']}) before -> after | "
        f"held-out (n={report['held_out']}) before -> after | held-out gain; p z-test / McNemar: significant | "
        "wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, label, prompts, samples, vb, va, ha, sec in _arms(report):
        lines.append(f"| {label} | {prompts} | {samples} | {_fmt(vb)} -> {_fmt(va)} | {_fmt(hb)} -> {_fmt(ha)} | "
                     f"{_gain(hb, ha)} | {sec:.0f} |")  # fmt: skip
    lines += ["", f"![reward curve and held-out accuracy]({png.name})", "",
              "Raw figures: `benchmarks/_work/align_grpo/report.json`; per-step metrics in "
              "`benchmarks/_work/align_grpo/{grpo,ei,ppo}/metrics.jsonl`.", ""]  # fmt: skip
    _plot(png, report)
    md = RESULTS / "align_grpo.md"
    trl = md.read_text().partition("## Side by side with TRL")[1:] if md.is_file() else ("", "")
    trl_json, base_files = WORK / "trl_report.json", [f for f in (WORK / "base").rglob("*") if f.is_file()]
    if trl[0] and (not trl_json.is_file() or trl_json.stat().st_mtime < max(f.stat().st_mtime for f in base_files)):
        lines += ["The TRL section below predates this run's base model (it was measured on an earlier version of "
                  "this benchmark); `nice .venv/bin/python -m benchmarks.align_grpo_trl --steps 5` re-measures it "
                  "on this one.", ""]  # fmt: skip
    write_text_atomic(md, "\n".join(lines) + ("\n" + "".join(trl) if trl[0] else ""))  # keep align_grpo_trl's


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _plot(png: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 3.8))
    mfile = WORK / "grpo" / "metrics.jsonl"
    if mfile.is_file():
        recs = [json.loads(x) for x in mfile.read_text().splitlines()]
        tr = [r for r in recs if r["kind"] == "train"]
        ev = [r for r in recs if r["kind"] == "eval"]
        ax[0].plot([r["step"] for r in tr], [r["reward"] for r in tr], label="GRPO mean reward (samples, T=1)")
        ax[0].plot(
            [r["step"] for r in ev], [r["accuracy"] for r in ev], "o-", label="greedy accuracy, verifier-only problems"
        )
        ax[0].set_xlabel("GRPO step")
        ax[0].legend()
        ax[1].plot([r["step"] for r in tr], [r["entropy"] for r in tr], label="entropy")
        ax[1].plot([r["step"] for r in tr], [r.get("clip_fraction", 0) for r in tr], label="clip fraction")
        ax[1].set_xlabel("GRPO step")
        ax[1].legend()
    # accuracy after each arm with its Wilson interval: held-out (circles), verifier-only (crosses, beside);
    # the dashed line and band are the base's held-out accuracy
    hb = report["base"]["held_out"]
    arms = [(name, va, ha) for name, _, _, _, _, va, ha, _ in _arms(report)]
    ax[2].axhspan(*hb["ci95"], color="grey", alpha=0.25)
    ax[2].axhline(hb["accuracy"], color="grey", ls="--", label=f"base, held-out ({hb['accuracy']:.2f})")
    for i, (_, va, ha) in enumerate(arms):
        for dx, e, fmt, lab in ((0, ha, "o", "held-out"), (0.2, va, "x", "verifier-only")):
            lo, hi = e["ci95"]
            ax[2].errorbar([i + dx], [e["accuracy"]], yerr=[[e["accuracy"] - lo], [hi - e["accuracy"]]], fmt=fmt,
                           capsize=4, color=f"C{i}", label=lab if i == 0 else None)  # fmt: skip
    ax[2].set_xticks(range(len(arms)), [name for name, _, _ in arms])
    ax[2].set_ylabel("greedy accuracy after")
    ax[2].set_ylim(0, 1)
    ax[2].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
