"""Shared pieces of the training-quality benchmarks: corpora -> token files, measured training runs
in fresh subprocesses, step-time calibration, and the machine block of the reports.

A run is `python -m benchmarks.quality_common --worker SPEC`: SPEC names a train preset, a base dict
and `--set`-style overrides, exactly what `scratchlm train` would get, so every row of a table can be
rerun by hand with the printed command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import WORK, run_measured, write_result
from scratchlm.config import deep_merge as merge

QUALITY = WORK / "quality"


# ---------------------------------------------------------------------------------------- data
def split_text(src: Path, out_dir: Path, valid_fraction: float, by_documents: str | None) -> tuple[Path, Path]:
    """Write train.txt / valid.txt: the last `valid_fraction` of the bytes (nanoGPT's 90/10 split), or of
    the documents when `by_documents` is their separator (so no document straddles the two)."""
    data = src.read_bytes()
    if by_documents:
        sep = by_documents.encode()
        docs = data.split(sep)
        cut = round(len(docs) * (1 - valid_fraction))
        train, valid = sep.join(docs[:cut]) + sep, sep.join(docs[cut:])
    else:
        cut = int(len(data) * (1 - valid_fraction))
        train, valid = data[:cut], data[cut:]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "train.txt", out_dir / "valid.txt"
    for path, part in zip(paths, (train, valid)):
        if not (path.is_file() and path.read_bytes() == part):
            path.write_bytes(part)
    return paths


def token_files(src: Path, name: str, vocab_size: int, specials: list[str], valid_fraction: float) -> dict:
    """Tokenizer trained on the train split + train/valid token files, cached in benchmarks/_work/quality/NAME."""
    from scratchlm.tokenizer import load_tokenizer
    from scratchlm.tokenizer.encode_corpus import encode_file
    from scratchlm.tokenizer.formats import save_tokenizer
    from scratchlm.tokenizer.tokenizer import Tokenizer
    from scratchlm.tokenizer.train import train_bpe

    out = QUALITY / name
    train_txt, valid_txt = split_text(src, out, valid_fraction, specials[0] if specials else None)
    tok_dir = out / "tokenizer"
    stamp = {"source": str(src), "size": src.stat().st_size, "vocab_size": vocab_size, "specials": specials}
    stamp_path = out / "stamp.json"
    if not (stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp and (out / "valid.bin").is_file()):
        vocab, merges = train_bpe(train_txt, vocab_size, specials)
        tok = Tokenizer(vocab, merges, specials)
        save_tokenizer(tok, tok_dir, overwrite=True)
        tok = load_tokenizer(tok_dir)
        for split, path in (("train", train_txt), ("valid", valid_txt)):
            encode_file(tok, path, out / f"{split}.bin", overwrite=True)
        stamp_path.write_text(json.dumps(stamp))
    meta = {s: json.loads((out / f"{s}.bin.json").read_text()) for s in ("train", "valid")}
    return {
        "data": {"train": str(out / "train.bin"), "valid": str(out / "valid.bin"), "tokenizer": str(tok_dir)},
        "train_tokens": meta["train"]["count"],
        "valid_tokens": meta["valid"]["count"],
        "bytes_per_token": meta["valid"]["bytes_per_token"],
    }


# ---------------------------------------------------------------------------------------- runs
def train_run(preset: str | None, base: dict, out_dir: Path, threads: int = 2) -> dict:
    """Train in a fresh process; the summary plus wall time and peak RSS. A finished run of exactly
    this spec (stamped `bench_spec.json` + `bench_result.json` in its directory) is reused, so an
    interrupted benchmark picks up where it stopped."""
    spec = {"preset": preset, "base": merge(base, {"out_dir": str(out_dir)}), "threads": threads}
    stamp, saved = out_dir / "bench_spec.json", out_dir / "bench_result.json"
    if stamp.is_file() and saved.is_file() and json.loads(stamp.read_text()) == spec:
        return json.loads(saved.read_text())
    # RSS sampled every second: a training run's memory changes slowly, and 20 ms sampling costs CPU
    result = run_measured("benchmarks.quality_common", spec, timeout=4 * 3600, sample_s=1.0)
    saved.write_text(json.dumps(result))
    stamp.write_text(json.dumps(spec))
    return result


def calibrate(preset: str | None, base: dict, out_dir: Path, steps: int = 40, threads: int = 2) -> float:
    """Seconds per optimizer step on an otherwise idle machine: the fastest 5-step interval after 10
    warm-up steps. The machine is shared; other processes make two OpenMP threads wait on each other
    (10x slower intervals were seen), so the fastest interval, not the median, is the machine's speed."""
    recs = _calibration_records(preset, base, out_dir, steps, threads)
    return max(r["tokens"] / r["step"] for r in recs) / max(r["tokens_per_s"] for r in recs)


def calibrate_cpu(preset: str | None, base: dict, out_dir: Path, steps: int = 30) -> float:
    """Single-thread CPU seconds per optimizer step (median over 5-step intervals after warm-up).

    CPU time of a one-thread process barely depends on what else the machine runs, unlike wall time:
    this is the robust way to give recipes equal compute on a shared machine."""
    recs = _calibration_records(preset, base, out_dir, steps, 1)
    per_step = [(b["cpu_s"] - a["cpu_s"]) / (b["step"] - a["step"]) for a, b in zip(recs, recs[1:])]
    return statistics.median(per_step)


def _calibration_records(preset, base: dict, out_dir: Path, steps: int, threads: int) -> list[dict]:
    """Train records of a short run; reused if `out_dir` already holds one of exactly this config
    (so an interrupted benchmark restarts without re-measuring)."""
    cal = merge(base, {"steps": steps, "eval_every": 0, "log_every": 5, "sample_tokens": 0, "out_dir": str(out_dir)})
    cal["data"] = {k: v for k, v in cal["data"].items() if k != "valid"}
    stamp = out_dir / "calibration.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == {"preset": preset, "config": cal, "threads": threads}):
        train_run(preset, cal, out_dir, threads)
        stamp.write_text(json.dumps({"preset": preset, "config": cal, "threads": threads}))
    recs = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("kind") == "train" and r["step"] >= 10]


def rerun_train_command(preset: str | None, base: dict) -> str:
    """The `scratchlm train` command line that reproduces a run (nested keys flattened to --set a.b=v)."""

    def flat(d: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            if isinstance(v, dict):
                out += flat(v, f"{prefix}{k}.")
            else:
                out.append(f"--set {prefix}{k}={json.dumps(v) if isinstance(v, list | str) else v}")
        return out

    return "scratchlm train " + (f"--preset {preset} " if preset else "") + " ".join(flat(base))


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def machine_line() -> str:
    import torch

    from benchmarks.common import _git_commit, cpu_model

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}, {cpu_model()}, "
        f"{len(os.sched_getaffinity(0))} usable cores, python {platform.python_version()}, torch {torch.__version__}, "
        f"git {_git_commit()}, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )


# ---------------------------------------------------------------------------------------- worker
def worker(spec: dict) -> None:
    import torch

    from scratchlm.config import load_config
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.loop import train

    torch.set_num_threads(spec["threads"])
    cfg = load_config(TrainConfig, "train", spec["preset"], base=spec["base"])
    summary = train(cfg, overwrite=True, progress=False)
    write_result(spec, {**summary, "t_end": time.time()})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True)
    worker(json.loads(parser.parse_args().worker))
    sys.exit(0)
