"""Quality benchmark 1: nanoGPT's Tiny Shakespeare CPU recipe, nanoGPT itself against its reproduction in
scratchlm (speed and loss, measured side by side), then scratchlm's `default` recipe in the same training time.

    python -m benchmarks.bench_shakespeare --nanogpt ../nanoGPT                 # ~12 minutes on 2 CPU cores
    python -m benchmarks.bench_shakespeare --nanogpt ../nanoGPT --steps 30 --repeats 1   # smoke test, ~1 min

nanoGPT (a checkout of github.com/karpathy/nanoGPT, only read) runs its README's CPU recipe, `python train.py
config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
--batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`, on
the char-level data its prepare.py would write (built here from ../shared/data, same files, 65 characters),
with `--dataset` and `--out_dir` outside the checkout and `--always_save_checkpoint=True` (no training change).
scratchlm trains the same model on the same files through `scratchlm.train.loop.train`: learned positions,
pre-LayerNorm, exact GELU MLP (4x), no biases, tied embeddings, std 0.02 init with residual projections
scaled by 1/sqrt(2 n_layers); AdamW (0.9, 0.99), weight decay 0.1 on every 2-D tensor, 100 warmup steps, cosine
to 1e-4, clip 1.0; batch 12 x 64, 2000 steps.

Timing: each run is a pair, both programs at once, each with one thread pinned to its own core (`taskset`),
then again with the cores swapped, `--repeats` times. Time is that of training steps 2..N, from each program's
own per-step clock (nanoGPT's `iter N: ... time Yms` lines, scratchlm's metrics.jsonl at log_every=1); nanoGPT's
eval iterations (its estimate_loss and checkpoint save fall inside its step timer) count at its median step.
CPU time: nanoGPT's process CPU sampled at each of its log lines; scratchlm's `cpu_s` records.
Loss: both final models on the whole validation split (111,540 characters) with the same windows (scratchlm's
`eval_windows`, 64-character non-overlapping windows); nanoGPT's final checkpoint is loaded with its own
model.py. Known differences left: initialisation and data-sampling random streams (torch vs numpy; nanoGPT's
evals every 250 steps also draw from its stream), warmup factor (s+1)/101 in nanoGPT vs (s+1)/100, and nanoGPT
runs one update past its last checkpoint (untimed, unscored).

The default recipe (configs/train/default.toml: RoPE, RMSNorm, SwiGLU, Muon, WSD) keeps the model shape and
context; its steps are set so that its CPU time matches the reproduction's (median run), from the CPU time per
step of a 60-step pinned one-thread calibration. Results: benchmarks/results/quality_shakespeare.{md,json}.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from benchmarks import nanogpt_ref
from benchmarks.common import REPO, RESULTS, TEXT, WORK, markdown_table, save_report
from benchmarks.quality_common import QUALITY, machine_line, merge, rerun_train_command

STEM = "quality_shakespeare"
STEPS = 2000  # the recipe's max_iters
CALIBRATION_STEPS = 60
SHAPE = {"context_length": 64, "d_model": 128, "n_layers": 4, "n_heads": 4}  # vocab_size from the data
NANOGPT = {
    "batch_size": 12, "seq_len": 64,
    "eval_every": 0, "eval_tokens": 0, "sample_tokens": 0, "log_every": 1,  # log_every 1: every step's time
    "model": {**SHAPE, "positions": "learned", "norm": "layernorm", "mlp": "gelu", "bias": False,
              "tie_embeddings": True},
    "optim": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.1, "decay_embeddings": True,
              "grad_clip": 1.0},
    "schedule": {"name": "cosine", "warmup_steps": 100, "min_lr_ratio": 0.1},
}  # fmt: skip


def default_recipe(batch_size: int) -> dict:
    """configs/train/default.toml at the nanoGPT shape (its switches, optimizer and schedule kept)."""
    return {"batch_size": batch_size, "seq_len": 64, "eval_every": 0, "eval_tokens": 0, "sample_tokens": 0,
            "log_every": 1, "model": dict(SHAPE)}  # fmt: skip


# ---------------------------------------------------------------------------------------- scratchlm side
def run_scratchlm(preset: str | None, cfg: dict, out_dir: Path, timeout: float, core: int) -> dict:
    """`scratchlm.train.loop.train` in a fresh one-thread worker pinned to `core` (quality_common's worker);
    the summary plus the step times of steps 2..N from metrics.jsonl."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    spec = {
        "preset": preset,
        "base": merge(cfg, {"out_dir": str(out_dir)}),
        "threads": 1,
        "result_path": str(out_dir / "bench_result.json"),
    }
    cmd = [sys.executable, "-m", "benchmarks.quality_common", "--worker", json.dumps(spec)]
    proc = nanogpt_ref.pinned_popen(cmd, core, REPO, out_dir / "worker.log")
    try:
        proc.wait(timeout)
    except Exception:
        proc.kill()
        raise
    finally:
        proc.log.close()
    if proc.returncode != 0:
        tail = (out_dir / "worker.log").read_text()[-3000:]
        raise RuntimeError(f"scratchlm worker failed (rc {proc.returncode}): {' '.join(cmd)}\n{tail}")
    summary = json.loads((out_dir / "bench_result.json").read_text())
    steps = summary["steps"]
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if r.get("kind") == "train" and "tokens_per_s" in r}
    if not all(s in train for s in range(1, steps + 1)):
        raise RuntimeError(f"{out_dir}/metrics.jsonl lacks a train record per step (log_every = 1): step times unknown")
    # wall time of a step = tokens since the previous record / tokens per second
    ms = {
        s: 1000 * (r["tokens"] - (train[s - 1]["tokens"] if s > 1 else 0)) / r["tokens_per_s"] for s, r in train.items()
    }
    cpu = {s: r["cpu_s"] for s, r in train.items() if "cpu_s" in r}
    clock = {s: r["time"] for s, r in train.items() if "time" in r}
    stats = nanogpt_ref.step_stats(ms, cpu, clock, 2, steps, set())
    return {"summary": summary, "stats": stats, "command": rerun_train_command(preset, cfg)}


def run_pinned(jobs: list[tuple], cores: list[int]) -> list:
    """Run (function, *args) jobs at most len(cores) at a time, each given a free core as `core=`."""
    free = list(cores)
    results: list = [None] * len(jobs)
    with concurrent.futures.ThreadPoolExecutor(len(cores)) as pool:
        pending, todo = {}, list(enumerate(jobs))
        while todo or pending:
            while todo and free:
                i, (fn, *args) = todo.pop(0)
                core = free.pop(0)
                pending[pool.submit(fn, *args, core=core)] = (i, core)
            done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for f in done:
                i, core = pending.pop(f)
                results[i] = f.result()
                free.append(core)
    return results


# ---------------------------------------------------------------------------------------- benchmark
def overlap(a: list[float] | None, b: list[float] | None) -> float | None:
    """Fraction of the shorter of two [start, end] windows during which the other also ran."""
    if not a or not b:
        return None
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0])) / max(min(a[1] - a[0], b[1] - b[0]), 1e-9)


def run_pair(checkout: Path, data: dict, repro: dict, steps: int, out: Path, cores: tuple[int, int], timeout: float):
    """nanoGPT and its reproduction in scratchlm at the same time, scratchlm on cores[0], nanoGPT on cores[1];
    both final models scored on the whole validation split."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        fs = pool.submit(run_scratchlm, None, repro, out / "scratchlm", timeout, cores[0])
        fn = pool.submit(nanogpt_ref.run_nanogpt, checkout, steps, data["dir"], out / "nanogpt", cores[1], timeout)
        s, n = fs.result(), fn.result()
    full = nanogpt_ref.full_split_loss(checkout, Path(n["ckpt"]), data["valid"], NANOGPT["batch_size"], 64)
    if full["ckpt_iter"] != steps:
        raise RuntimeError(f"nanoGPT's checkpoint is from iteration {full['ckpt_iter']}, not {steps}")
    nano = {
        "stats": nanogpt_ref.nanogpt_stats(n, steps),
        "val_loss_full": full["val_loss"],
        "val_tokens": full["val_tokens"],
        "params": full["params"],
        "own_evals": n["evals"],
        "final_train_loss": n["iters"][steps - 1]["loss"],
        "command": n["command"],
    }
    summary = s["summary"]
    scratch = {
        "stats": s["stats"],
        "val_loss_full": summary["val_loss"],
        "val_tokens": summary["val_tokens"],
        "params": summary["params"],
        "final_train_loss": summary["final_loss"],
        "command": s["command"],
    }
    return {
        "name": out.name,
        "scratchlm_core": cores[0],
        "nanogpt_core": cores[1],
        "nanogpt": nano,
        "scratchlm": scratch,
        "ratio_median_step": scratch["stats"]["median_ms"] / nano["stats"]["median_ms"],
        "overlap": overlap(nano["stats"]["window"], scratch["stats"]["window"]),
    }


def cpu_per_step(stats: dict) -> float:
    """CPU seconds per timed step; the wall median where CPU time is missing."""
    cpu = stats["cpu_s"] / stats["steps_timed"]
    return cpu if cpu == cpu else stats["median_ms"] / 1000


def run_default_recipe(
    base: dict, batch_sizes: list[int], pairs: list[dict], steps: int, out: Path, cores: list[int], timeout: float
) -> list[dict]:
    """The default recipe at each batch size for the reproduction's training time. Steps come from CPU time
    per step (one thread: robust to other work on the machine) of a short pinned calibration run."""
    budget = steps * statistics.median(cpu_per_step(p["scratchlm"]["stats"]) for p in pairs)
    cfgs = {bs: merge(base, default_recipe(bs)) for bs in batch_sizes}

    def job(cfg: dict, name: str) -> tuple:
        return run_scratchlm, "default", cfg, out / name, timeout

    cal_jobs = [job(merge(c, {"steps": CALIBRATION_STEPS}), f"calibrate-default-batch{bs}") for bs, c in cfgs.items()]
    cal = run_pinned(cal_jobs, cores)
    for c, r in zip(cfgs.values(), cal):
        c["steps"] = max(3, round(budget / cpu_per_step(r["stats"])))  # >= 3: steps 2..N hold a median
    print(f"default recipe: {budget:.1f} CPU-s -> steps {[c['steps'] for c in cfgs.values()]}", flush=True)
    runs = run_pinned([job(c, f"default-batch{bs}") for bs, c in cfgs.items()], cores)
    return [
        {
            "batch_size": bs,
            "config": c,
            "budget_cpu_s": budget,
            "calibration": cr["stats"],
            "stats": r["stats"],
            "summary": r["summary"],
            "command": r["command"],
        }
        for (bs, c), cr, r in zip(cfgs.items(), cal, runs)
    ]


def run(checkout: Path, steps: int, repeats: int, batch_sizes: list[int]) -> dict:
    t0 = time.time()
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        sys.exit("this benchmark runs nanoGPT and scratchlm at once on two cores; only one is usable")
    reference = nanogpt_ref.check_checkout(checkout)
    data = nanogpt_ref.prepare_char_data(TEXT / "tinyshakespeare.txt", QUALITY / "shakespeare-char")
    base = {
        "data": {"train": str(data["train"]), "valid": str(data["valid"])},
        "model": {"vocab_size": data["vocab_size"]},
    }
    repro = merge(base, merge(NANOGPT, {"steps": steps}))
    out = QUALITY / "shakespeare-runs"
    timeout = 3600 + 2 * steps
    raw = {
        "machine": machine_line(),
        "command": " ".join(["python -m benchmarks.bench_shakespeare", *sys.argv[1:]]),
        "nanogpt": reference,
        "steps": steps,
        "cores": cores,
        "data": str(data["dir"]),
        "pairs": [],
    }
    for rep in range(1, repeats + 1):
        for order in (cores, cores[::-1]):  # (scratchlm core, nanoGPT core), then swapped
            name = f"rep{rep}-scratchlm{order[0]}-nanogpt{order[1]}"
            print(f"[{time.time() - t0:5.0f} s] {name}", flush=True)
            pair = run_pair(checkout, data, repro, steps, out / name, tuple(order), timeout)
            raw["pairs"].append({"repeat": rep, **pair})
            a, b = pair["nanogpt"], pair["scratchlm"]
            print(
                f"  median step: nanoGPT {a['stats']['median_ms']:.2f} ms, scratchlm {b['stats']['median_ms']:.2f} ms;"
                f" val loss (whole split) {a['val_loss_full']:.4f} / {b['val_loss_full']:.4f}",
                flush=True,
            )
    raw["default_recipe"] = (
        run_default_recipe(base, batch_sizes, raw["pairs"], steps, out, cores, timeout) if batch_sizes else []
    )
    raw["total_s"] = time.time() - t0
    raw["loadavg_end"] = os.getloadavg()
    return raw


# ---------------------------------------------------------------------------------------- report
def _med(pairs: list[dict], side: str, key: str) -> float:
    return statistics.median(p[side]["stats"][key] for p in pairs)


def _ms(st: dict) -> str:
    spread = f" ({st['p10_ms']:.1f}-{st['p90_ms']:.1f})" if st.get("p10_ms") is not None else ""
    return f"{st['median_ms']:.2f}{spread}"


def render_pairs(raw: dict) -> list[str]:
    pairs, n = raw["pairs"], raw["steps"]
    rows = []
    for label, key, fmt in (
        ("median step ms", "median_ms", "{:.2f}"),
        (f"train s, steps 2-{n}", "train_s", "{:.1f}"),
        (f"CPU s, steps 2-{n}", "cpu_s", "{:.1f}"),
    ):
        a, b = _med(pairs, "nanogpt", key), _med(pairs, "scratchlm", key)
        rows.append([f"{label} (median of {len(pairs)} runs)", fmt.format(a), fmt.format(b), f"{b / a:.3f}"])
    la = statistics.median(p["nanogpt"]["val_loss_full"] for p in pairs)
    lb = statistics.median(p["scratchlm"]["val_loss_full"] for p in pairs)
    rows.append(["val loss, whole validation split (nats/char)", f"{la:.4f}", f"{lb:.4f}", f"{lb - la:+.4f}"])
    same = {p["nanogpt"]["params"] for p in pairs} == {p["scratchlm"]["params"] for p in pairs}
    rows.append(
        ["parameters", pairs[0]["nanogpt"]["params"], pairs[0]["scratchlm"]["params"], "same" if same else "DIFFERENT"]
    )
    ratios = [p["ratio_median_step"] for p in pairs]
    run_rows, busy = [], []
    for p in pairs:
        a, b = p["nanogpt"], p["scratchlm"]
        own = a["own_evals"].get(str(n), a["own_evals"].get(n, {})).get("val_loss", float("nan"))
        busy += [x["stats"]["cpu_s"] / x["stats"]["train_s"] for x in (a, b)]
        ov = "-" if p["overlap"] is None else f"{100 * p['overlap']:.0f}%"
        run_rows.append(
            [
                p["name"],
                _ms(a["stats"]),
                _ms(b["stats"]),
                f"{p['ratio_median_step']:.3f}",
                f"{a['stats']['train_s']:.1f}",
                f"{b['stats']['train_s']:.1f}",
                f"{a['stats']['cpu_s']:.1f}",
                f"{b['stats']['cpu_s']:.1f}",
                ov,
                f"{a['val_loss_full']:.4f}",
                f"{b['val_loss_full']:.4f}",
                f"{own:.4f}",
            ]
        )
    busy = [x for x in busy if x == x]
    note = f"CPU time / wall time of the timed steps: {min(busy):.2f}-{max(busy):.2f}" if busy else "no CPU times"
    if busy and min(busy) < 0.95:
        note += (
            " (below ~0.95 a core was shared with other work: those wall times are inflated; rerun on a quiet machine)"
        )
    return [
        f"## Same recipe, side by side ({n} steps)",
        "",
        markdown_table(["", "nanoGPT", "scratchlm", "scratchlm / nanoGPT"], rows),
        "",
        f"Per-run ratio of median step times: {', '.join(f'{r:.3f}' for r in ratios)}"
        f" (median {statistics.median(ratios):.3f}). {note}.",
        "",
        markdown_table(
            [
                "run",
                "nanoGPT step ms",
                "scratchlm step ms",
                "ratio",
                "nanoGPT train s",
                "scratchlm train s",
                "nanoGPT CPU s",
                "scratchlm CPU s",
                "overlap",
                "nanoGPT val loss",
                "scratchlm val loss",
                "nanoGPT own val estimate",
            ],
            run_rows,
        ),
        "",
    ]


def render_default(raw: dict) -> list[str]:
    pairs, n = raw["pairs"], raw["steps"]
    repro_cpu = _med(pairs, "scratchlm", "cpu_s") * n / (n - 1)
    lb = statistics.median(p["scratchlm"]["val_loss_full"] for p in pairs)
    rows = [
        [
            "nanoGPT recipe in scratchlm (median run)",
            n,
            n * NANOGPT["batch_size"] * 64,
            f"{_med(pairs, 'scratchlm', 'median_ms'):.2f}",
            f"{_med(pairs, 'scratchlm', 'train_s'):.1f}",
            f"{repro_cpu:.1f}",
            "1.00",
            f"{lb:.4f}",
        ]
    ]
    for d in raw["default_recipe"]:
        st, sm = d["stats"], d["summary"]
        cpu = st["cpu_s"] * sm["steps"] / st["steps_timed"]
        rows.append(
            [
                f"scratchlm default, batch {d['batch_size']}",
                sm["steps"],
                sm["tokens"],
                f"{st['median_ms']:.2f}",
                f"{st['train_s']:.1f}",
                f"{cpu:.1f}",
                f"{cpu / repro_cpu:.2f}",
                f"{sm['val_loss']:.4f}",
            ]
        )
    return [
        "## scratchlm's default recipe in the same training time",
        "",
        f"Steps from the CPU time per step of a {CALIBRATION_STEPS}-step calibration (one thread, pinned, two"
        " runs at once) to match the reproduction's CPU time; the runs themselves ran two at a time, pinned."
        " CPU s: all steps (steps 2-N scaled by N / (N - 1)).",
        "",
        markdown_table(
            [
                "recipe",
                "steps",
                "tokens",
                "median step ms",
                "train s (steps 2-N)",
                "CPU s",
                "CPU / reproduction",
                "val loss (nats/char)",
            ],
            rows,
        ),
        "",
    ]


def render(raw: dict) -> str:
    n, ref = raw["steps"], raw["nanogpt"]
    version = f"git {ref['git_commit']}" if ref["git_commit"] else "not a git checkout"
    lines = [
        "# Tiny Shakespeare, char level: nanoGPT against its CPU recipe in scratchlm, and scratchlm's default recipe",
        "",
        f"- {raw['machine']}; load average at end {' / '.join(f'{x:.2f}' for x in raw['loadavg_end'])}",
        f"- nanoGPT: {version}, train.py + model.py sha256 {ref['sha256']}; its command and each scratchlm"
        " run's `scratchlm train` command are in the .json",
        f"- rerun (from the repository root, venv active): `{raw['command']}`",
        "- both programs train on the same files (benchmarks/_work/quality/shakespeare-char: nanoGPT's char-level"
        " train.bin / val.bin / meta.pkl, 65 characters, 90/10 split, plus scratchlm sidecars)",
        f"- a run: nanoGPT and scratchlm at the same time, one thread each, pinned to one of cores {raw['cores']}"
        " (the run name gives each one's core), then swapped; overlap: share of the shorter timed span during"
        f" which the other also trained. Times: each program's own clock of training steps 2-{n} (nanoGPT's eval"
        " iterations count at its median step); step ms: median (p10-p90)",
        "- val loss: final models on the whole validation split, the same 64-character windows for both;"
        " nanoGPT's own estimate (20 random batches of 12 x 64) in the last column",
        "",
        *render_pairs(raw),
        *(render_default(raw) if raw["default_recipe"] else []),
        f"Total benchmark time {raw['total_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--nanogpt", type=Path, help="path of a nanoGPT checkout (git clone github.com/karpathy/nanoGPT)"
    )
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps of both programs (the recipe: 2000)")
    parser.add_argument("--repeats", type=int, default=2, help="pairs per core order (each repeat runs both orders)")
    parser.add_argument(
        "--default-batch-sizes",
        type=int,
        nargs="*",
        default=[12, 32],
        help="batch sizes of the default-recipe rows; none to skip them",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results folder (default {RESULTS}; {WORK / 'results_quick'} when --steps is not 2000)",
    )
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the saved .json")
    args = parser.parse_args()
    if args.steps < 3 or args.repeats < 1:
        parser.error("--steps must be >= 3 (steps 2..N are timed) and --repeats >= 1")
    out = args.out or (RESULTS if args.steps == STEPS else WORK / "results_quick")
    if args.render:
        raw = json.loads((out / f"{STEM}.json").read_text())
    else:
        if args.nanogpt is None:
            parser.error("--nanogpt PATH is required (a checkout of https://github.com/karpathy/nanoGPT)")
        raw = run(args.nanogpt, args.steps, args.repeats, args.default_batch_sizes)
    save_report(out, STEM, render(raw), raw)


if __name__ == "__main__":
    main()
