"""Run logging: `metrics.jsonl` (always), a progress line, MFU, optional wandb / TensorBoard, and
the loss-curve PNG written at the end of a run."""

from __future__ import annotations

import json
import logging
import math
import time
from functools import lru_cache
from pathlib import Path

import torch

from scratchlm.io import atomic_write, named_write_errors

log = logging.getLogger(__name__)

# Dense peak FLOP/s per device (vendor datasheets, no sparsity), by dtype. Matched by substring of
# torch.cuda.get_device_name(); CPUs have no table entry and are measured instead.
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},  # SXM; PCIe is ~756e12
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12},
    "RTX 4090": {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12},
    "V100": {"bf16": 0.0, "fp16": 125e12, "fp32": 15.7e12},
}


@lru_cache(maxsize=4)
def measured_matmul_flops(device: str = "cpu", n: int = 1024, trials: int = 5, seconds: float = 0.1) -> float:
    """Achieved fp32 matmul FLOP/s of an n x n x n product on this device: the CPU 'peak'. The best of
    several short trials, so a busy moment on a shared machine does not lower the peak (and inflate MFU)."""
    gen = torch.Generator(device).manual_seed(0)  # not the global RNG: measuring must not change a run's dropout
    a, b = (torch.randn(n, n, device=device, generator=gen) for _ in range(2))
    a @ b  # warm up
    best = 0.0
    for _ in range(trials):
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - t0))
    return best


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s, where the number comes from) for MFU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, table in PEAK_FLOPS.items():
            if key in name and table.get(precision):
                return table[precision], f"{key} datasheet {precision}"
        return 0.0, f"unknown GPU {name!r}: no MFU"
    return measured_matmul_flops(str(device)), "measured CPU fp32 matmul"


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Drop the records of steps after `step` from `run_dir/metrics.jsonl` (a resume from the checkpoint at
    `step` trains them again: kept, they would appear twice). Atomic; a torn last line (a kill mid-write) is
    dropped too. Returns the number of records removed."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept, removed = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            removed += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            removed += 1
        else:
            kept.append(line)
    if removed:
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))
    return removed


class MetricsLogger:
    """Appends one JSON object per event to `run_dir/metrics.jsonl` (flushed at once, so a crash
    loses nothing), and mirrors scalars to wandb / TensorBoard when asked and installed."""

    def __init__(self, run_dir: Path, config: dict, use_wandb: bool = False, use_tensorboard: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.wandb = self.tb = None
        if use_wandb:
            try:
                import wandb

                self.wandb = wandb.init(project="scratchlm", name=Path(run_dir).name, config=config, resume="allow")
            except ImportError:
                log.warning("wandb requested but not installed (pip install scratchlm[tracking]); skipping")
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                log.warning("TensorBoard requested but not installed (pip install tensorboard); skipping")

    def log(self, record: dict) -> None:
        record = {"time": round(time.time(), 3), **record}
        with named_write_errors(self.path):  # a full disk: one line naming metrics.jsonl
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        step = record.get("step", 0)
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, step)

    def close(self) -> None:
        with named_write_errors(self.path):
            self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return out


def format_progress(
    step: int, total: int, loss: float, lr: float, tokens_per_s: float, mfu: float, eta_s: float
) -> str:
    eta = time.strftime("%H:%M:%S", time.gmtime(max(eta_s, 0))) if math.isfinite(eta_s) else "?"
    return (
        f"step {step:>6}/{total} | loss {loss:7.4f} | lr {lr:.2e} | {tokens_per_s:8.0f} tok/s"
        f" | MFU {100 * mfu:5.1f}% | ETA {eta}"
    )


def plot_loss_curve(run_dir: Path) -> Path | None:
    """`run_dir/loss.png`: training loss (and validation loss) against tokens seen."""
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    valid = [r for r in records if r.get("kind") == "eval" and "val_loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], label="train", lw=1, alpha=0.8)
    if valid:
        ax.plot([r["tokens"] for r in valid], [r["val_loss"] for r in valid], "o-", label="validation")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / "loss.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
