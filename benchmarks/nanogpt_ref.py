"""nanoGPT itself as the reference of bench_shakespeare.py: its char-level Tiny Shakespeare data, its CPU
recipe command, the run pinned to one core with its per-iteration log read while it runs, and its final
checkpoint scored on the whole validation split with the windows scratchlm's own evaluation uses.

Nothing here edits or imports nanoGPT at import time; its checkout is only read (`--dataset` and
`--out_dir` point outside it, so its `data/` folder stays untouched). Also: pinned one-thread launches
of any command (`pinned_popen`), used for the scratchlm worker too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

# nanoGPT README, "I only have a macbook" (CPU): the recipe verbatim, minus max_iters / lr_decay_iters.
RECIPE = [
    "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
    "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0",
]  # fmt: skip
CONFIG_EVAL_INTERVAL = 250  # config/train_shakespeare_char.py
ITER_LINE = re.compile(r"^iter (\d+): loss (\S+), time ([\d.]+)ms")
EVAL_LINE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------- data
def prepare_char_data(src: Path, out_dir: Path) -> dict:
    """What nanoGPT's data/shakespeare_char/prepare.py writes (train.bin / val.bin: uint16 ids of the sorted
    distinct characters, first 90% / last 10%; meta.pkl: stoi, itos, vocab_size), from a local copy of the
    text instead of its download, plus a scratchlm token-file sidecar beside each .bin, so both programs read
    the very same files. Rewritten only when the source changes."""
    import numpy as np

    from scratchlm.tokenizer.token_file import TOKENS_FORMAT, TOKENS_VERSION, sidecar_path

    text = src.read_text(encoding="utf-8")
    chars = sorted(set(text))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    stamp = out_dir / "stamp.json"
    info = {"source": str(src), "sha256": digest, "vocab_size": len(chars), "chars": len(text)}
    paths = {"train": out_dir / "train.bin", "valid": out_dir / "val.bin", "dir": out_dir}
    if stamp.is_file() and json.loads(stamp.read_text()) == info:
        return {**info, **paths}
    out_dir.mkdir(parents=True, exist_ok=True)
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(text)
    # Same hash for both files: scratchlm checks that train and valid come from one vocabulary.
    vocab_hash = "nanogpt-char-" + hashlib.sha256("".join(chars).encode()).hexdigest()[:16]
    for key, part in (("train", text[: int(n * 0.9)]), ("valid", text[int(n * 0.9) :])):
        ids = np.array([stoi[c] for c in part], dtype=np.uint16)
        ids.tofile(paths[key])
        sidecar = {
            "format": TOKENS_FORMAT,
            "version": TOKENS_VERSION,
            "dtype": "uint16",
            "count": int(ids.size),
            "vocab_size": len(chars),
            "tokenizer_hash": vocab_hash,
            "tokenizer": None,
            "source": str(src.resolve()),
            "source_bytes": len(part.encode()),
            "bytes_per_token": len(part.encode()) / ids.size,
        }
        sidecar_path(paths[key]).write_text(json.dumps(sidecar, indent=1))
    # nanoGPT reads its vocabulary from a pickle; only nanoGPT loads this file, never scratchlm
    with open(out_dir / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    stamp.write_text(json.dumps(info))
    return {**info, **paths}


# ---------------------------------------------------------------------------------------- checkout
def check_checkout(path: Path) -> dict:
    """Fail early on a path that is not a nanoGPT checkout; identify its version (git commit if a repository,
    and the sha256 of train.py + model.py either way)."""
    need = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py")
    missing = [f for f in need if not (path / f).is_file()]
    if missing:
        sys.exit(
            f"{path} is not a nanoGPT checkout (missing {', '.join(missing)}): "
            "git clone https://github.com/karpathy/nanoGPT and pass --nanogpt PATH"
        )
    h = hashlib.sha256()
    for f in ("train.py", "model.py"):
        h.update((path / f).read_bytes())
    commit = None
    if (path / ".git").exists():  # its own repository, not a folder inside another one
        git = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        commit = git.stdout.strip() or None
    return {"path": str(path.resolve()), "git_commit": commit, "sha256": h.hexdigest()[:12]}


def eval_interval(steps: int) -> int:
    """The config's 250 when it divides `steps`, else `steps`: nanoGPT writes its checkpoint only at an
    eval, and the one we score must be the one after exactly `steps` updates."""
    return CONFIG_EVAL_INTERVAL if steps % CONFIG_EVAL_INTERVAL == 0 else steps


def recipe_args(steps: int, data_dir: Path, out_dir: Path) -> list[str]:
    """train.py arguments: the README recipe with max_iters = lr_decay_iters = steps; `--dataset` is an
    absolute path (train.py reads os.path.join('data', dataset)) and every eval saves a checkpoint (the recipe's
    config saves only on a val improvement; this changes no training step)."""
    args = [
        *RECIPE,
        f"--max_iters={steps}",
        f"--lr_decay_iters={steps}",
        f"--dataset={data_dir.resolve()}",
        f"--out_dir={out_dir.resolve()}",
        "--always_save_checkpoint=True",
    ]
    if eval_interval(steps) != CONFIG_EVAL_INTERVAL:
        args.append(f"--eval_interval={steps}")
    return args


# ---------------------------------------------------------------------------------------- pinned runs
def pinned_popen(cmd: list[str], core: int, cwd: Path, log_path: Path, pipe: bool = False) -> subprocess.Popen:
    """Start `cmd` on one core with one OpenMP thread (taskset when present, else affinity set right after the
    start, before torch starts its threads). With `pipe` its stdout comes back line by line, unbuffered."""
    env = {**os.environ, **ONE_THREAD, "PYTHONUNBUFFERED": "1"}
    taskset = shutil.which("taskset")
    full = [taskset, "-c", str(core), *cmd] if taskset else cmd
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed by the caller via proc.log
    out = subprocess.PIPE if pipe else log
    proc = subprocess.Popen(full, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    if not taskset:
        os.sched_setaffinity(proc.pid, {core})
    proc.log = log
    return proc


def _kill_after(proc: subprocess.Popen, timeout: float) -> threading.Timer:
    timer = threading.Timer(timeout, proc.kill)
    timer.daemon = True
    timer.start()
    return timer


def run_nanogpt(checkout: Path, steps: int, data_dir: Path, out_dir: Path, core: int, timeout: float) -> dict:
    """Run train.py pinned to `core`; parse each `iter N: loss X, time Yms` line as it arrives and stamp it with
    the process's CPU time (user + system), so both wall and CPU time per iteration exclude what we choose."""
    import psutil

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    cmd = [sys.executable, "train.py", *recipe_args(steps, data_dir, out_dir)]
    t0 = time.time()
    proc = pinned_popen(cmd, core, checkout, out_dir / "train.log", pipe=True)
    ps = psutil.Process(proc.pid)
    timer = _kill_after(proc, timeout)
    iters, evals, params = {}, {}, None
    for line in proc.stdout:
        proc.log.write(line)
        if m := ITER_LINE.match(line):
            try:
                cpu = sum(ps.cpu_times()[:2])
            except psutil.Error:
                cpu = float("nan")
            iters[int(m[1])] = {"ms": float(m[3]), "loss": float(m[2]), "cpu_s": cpu, "time": time.time()}
        elif m := EVAL_LINE.match(line):
            evals[int(m[1])] = {"train_loss": float(m[2]), "val_loss": float(m[3])}
        elif line.startswith("number of parameters:"):
            params = line.split(":", 1)[1].strip()
    proc.wait()
    timer.cancel()
    proc.log.close()
    if proc.returncode != 0 or not (out_dir / "ckpt.pt").is_file():
        tail = (out_dir / "train.log").read_text()[-3000:]
        raise RuntimeError(f"nanoGPT failed (rc {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return {
        "command": f"cd {checkout} && python train.py " + " ".join(recipe_args(steps, data_dir, out_dir)),
        "iters": iters,
        "evals": evals,
        "params_printed": params,
        "process_s": time.time() - t0,
        "eval_interval": eval_interval(steps),
        "ckpt": str(out_dir / "ckpt.pt"),
    }


def step_stats(
    ms: dict[int, float], cpu: dict[int, float], clock: dict[int, float], first: int, last: int, skip: set[int]
) -> dict:
    """Wall / CPU time of steps first..last (inclusive). Steps in `skip` (nanoGPT's eval iterations, whose time
    includes the eval and a checkpoint save) count at the median wall time (mean CPU time: CPU times come in
    10 ms ticks) of the others, so only training is timed. `cpu` and `clock` map a step to the process CPU
    time and the time.time() at its end; `window` is when the timed steps ran (to check two runs overlapped)."""
    kept = [ms[i] for i in range(first, last + 1) if i not in skip]
    med = statistics.median(kept)
    n_skip = sum(first <= i <= last for i in skip)
    cpu_steps = [cpu[i] - cpu[i - 1] for i in range(first, last + 1) if i not in skip and i in cpu and i - 1 in cpu]
    cpu_s = sum(cpu_steps) * (last - first + 1) / len(cpu_steps) if cpu_steps else float("nan")
    deciles = statistics.quantiles(kept, n=10) if len(kept) > 1 else [med] * 9
    return {
        "steps_timed": last - first + 1,
        "median_ms": med,
        "mean_ms": statistics.fmean(kept),
        "p10_ms": deciles[0],
        "p90_ms": deciles[-1],
        "train_s": (sum(kept) + n_skip * med) / 1000,
        "cpu_s": cpu_s,
        "steps_at_median": n_skip,
        "window": [clock[first - 1], clock[last]] if first - 1 in clock and last in clock else None,
    }


def nanogpt_stats(run: dict, steps: int) -> dict:
    """Steps 2..steps of a nanoGPT run (its iterations 1..steps-1; iteration 0 also holds the first eval)."""
    iters = run["iters"]
    ms = {i: r["ms"] for i, r in iters.items()}
    cpu = {i: r["cpu_s"] for i, r in iters.items()}
    clock = {i: r["time"] for i, r in iters.items()}
    skip = {i for i in range(1, steps) if i % run["eval_interval"] == 0}
    return step_stats(ms, cpu, clock, 1, steps - 1, skip)


# ---------------------------------------------------------------------------------------- evaluation
def load_model(checkout: Path, ckpt_path: Path):
    """nanoGPT's GPT from its own model.py, with the weights of `ckpt_path` (loaded weights_only)."""
    import torch

    spec = importlib.util.spec_from_file_location("nanogpt_model", checkout / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = module.GPT(module.GPTConfig(**ckpt["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    return model.eval(), int(ckpt["iter_num"])


def full_split_loss(checkout: Path, ckpt_path: Path, valid_path: Path, batch_size: int, seq_len: int) -> dict:
    """Mean loss per character of nanoGPT's checkpoint over the whole validation file, on the windows of
    scratchlm's own evaluation (`eval_windows`: consecutive non-overlapping windows, every target once, the
    last one padded), so both models are scored on exactly the same predictions."""
    import torch
    import torch.nn.functional as F

    from scratchlm.train.data import IGNORE_INDEX, TokenData, eval_windows

    model, iter_num = load_model(checkout, ckpt_path)
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in eval_windows(TokenData(valid_path), batch_size, seq_len):
            logits, _ = model(x, targets=y.clamp(min=-1))  # nanoGPT's ignore index is -1; full logits need targets
            total += F.cross_entropy(
                logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            ).item()
            count += int((y != IGNORE_INDEX).sum())
    return {
        "val_loss": total / count,
        "val_tokens": count,
        "ckpt_iter": iter_num,
        "params": sum(p.numel() for p in model.parameters()),
    }
