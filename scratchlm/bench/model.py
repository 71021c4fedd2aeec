"""Model benchmark: timed forward / forward+backward / training steps on random tokens, with MFU,
a torch.profiler trace and a memory record.

    cfg = ModelBenchConfig(preset="small", batch=4, seq_len=128, mode="fwd_bwd", steps=5)
    result = run_model_bench(cfg)          # dict: timings (mean, std, median), tokens/s, FLOPs, MFU, memory
    print(format_result(result))

Timing: `warmup` untimed steps (allocator, autotuning, compile), then `steps` steps each timed on
its own with the device synchronised before and after (CUDA kernels run asynchronously: without the
sync a timer only sees the launch). In "fwd_bwd" and "step" modes the forward and the backward are
timed separately too (a sync between them).

FLOPs come from the model's own accounting (`model.accounting.flops_per_token`, causal: the work
causal attention needs; 1 multiply-add = 2 FLOPs): forward = F x tokens, backward = 2F x tokens, the
optimizer's elementwise work not counted. MFU = model FLOPs per step / median step time / peak, the peak
being a large matmul measured on the same device in the same run, in the dtype the matmuls run in
(fp32, or bf16 under autocast): what this device actually reaches, not a datasheet figure.

Memory: on CUDA the peak allocated bytes, and with `memory_snapshot` the allocator history
(`torch.cuda.memory._record_memory_history`) dumped as a pickle for https://pytorch.org/memory_viz.
On CPU the peak RSS of the timed steps (Linux: VmHWM, reset through /proc/self/clear_refs; elsewhere
the process lifetime peak from getrusage) and, with `memory_snapshot`, a JSON file holding that and
the profiler's allocation timeline (torch's own snapshot exists only for CUDA).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_write, check_writable, write_json
from scratchlm.model.config import ModelConfig

MODES = ("fwd", "fwd_bwd", "step")
PRECISIONS = ("fp32", "bf16")

# The model sizes of the CS336 systems assignment (Stanford CS336, 2025, assignment 2), as
# (d_model, n_layers, n_heads); d_ff = 4 d_model, vocab 10,000. Their model (assignment 1): pre-norm
# RMSNorm, RoPE, SwiGLU with that d_ff, untied output head, so e.g. "2.7b" has ~3.4B parameters.
CS336_SIZES = {
    "small": (768, 12, 12),
    "medium": (1024, 24, 16),
    "large": (1280, 36, 20),
    "xl": (1600, 48, 25),
    "2.7b": (2560, 32, 32),
}


@dataclass
class ModelBenchConfig:
    preset: str = "small"  # a CS336 size (CS336_SIZES) or a model preset (configs/model) / .toml file
    batch: int = 4
    seq_len: int = 128
    mode: str = "fwd_bwd"  # fwd (no_grad forward) | fwd_bwd (forward + loss + backward) | step (+ AdamW step)
    warmup: int = 2
    steps: int = 5
    precision: str = "fp32"  # fp32 | bf16 (autocast; weights and optimizer stay fp32)
    compile: bool = False  # torch.compile the model first
    device: str = "cpu"
    profile_dir: str | None = None  # torch.profiler trace (Chrome JSON) + top operators table written here
    profile_steps: int = 3  # steps recorded by the profiler (after the timed steps)
    memory_snapshot: str | None = None  # CUDA: allocator history pickle; CPU: JSON (peak RSS + timeline)
    overrides: list[str] = field(default_factory=list)  # `--set key=value` on the model config
    seed: int = 0
    peak_n: int = 0  # matmul size of the peak measurement; 0 = 2048 on CPU, 8192 on CUDA

    def validate(self) -> None:
        for name in ("batch", "seq_len", "steps", "profile_steps"):
            if getattr(self, name) < 1:
                raise ScratchLMError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.peak_n < 0:
            raise ScratchLMError(f"--peak-n must be >= 0, got {self.peak_n}")
        if self.warmup < 0:
            raise ScratchLMError(f"--warmup must be >= 0, got {self.warmup}")
        if self.mode not in MODES:
            raise ScratchLMError(f"unknown mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.precision not in PRECISIONS:
            raise ScratchLMError(f"unknown precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        try:
            dev = torch.device(self.device)
        except RuntimeError:
            raise ScratchLMError(f"--device must be cpu or cuda[:i], got {self.device!r}") from None
        if dev.type not in ("cpu", "cuda"):
            raise ScratchLMError(f"--device must be cpu or cuda, got {self.device!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ScratchLMError("--device cuda asked for but CUDA is not available here (use --device cpu)")


# ---------------------------------------------------------------------------------------------
# model and FLOPs


def bench_model_config(preset: str, seq_len: int, overrides: list[str] | tuple[str, ...] = ()) -> ModelConfig:
    """The ModelConfig of a CS336 size (context_length = seq_len) or of a model preset, with `--set` overrides."""
    from scratchlm.config import list_presets, load_config

    name = preset.lower()
    if name in CS336_SIZES:
        d, n_layers, n_heads = CS336_SIZES[name]
        base = dict(
            vocab_size=10_000,
            context_length=seq_len,
            d_model=d,
            n_layers=n_layers,
            n_heads=n_heads,
            d_ff=4 * d,
            mlp="swiglu",
            norm="rmsnorm",
            positions="rope",
            tie_embeddings=False,
        )
        return load_config(ModelConfig, "model", None, list(overrides), base=base)
    if not preset.endswith(".toml") and preset not in list_presets("model"):
        raise ScratchLMError(
            f"unknown model size or preset {preset!r}: expected a CS336 size ({', '.join(CS336_SIZES)}) "
            f"or a model preset ({', '.join(list_presets('model'))}) or a .toml file"
        )
    cfg = load_config(ModelConfig, "model", preset, list(overrides))
    if seq_len > cfg.context_length:
        raise ScratchLMError(
            f"--seq-len {seq_len} exceeds the context_length {cfg.context_length} of preset {preset!r} "
            f"(a longer context: --set context_length={seq_len})"
        )
    return cfg


def model_flops_per_step(cfg: ModelConfig, batch: int, seq_len: int, mode: str) -> float:
    """Model FLOPs of one step of `mode` on batch x seq_len tokens: forward F per token (the model's
    causal count), + backward 2F for fwd_bwd and step (the optimizer's elementwise update not counted)."""
    from scratchlm.model.accounting import flops_per_token

    f = flops_per_token(cfg, seq_len, causal=True)
    per_token = f["forward"] if mode == "fwd" else f["train"]
    return per_token * batch * seq_len


def mfu(flops_per_step: float, step_seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak."""
    if step_seconds <= 0 or peak_flops <= 0:
        raise ScratchLMError(f"MFU needs positive time and peak, got {step_seconds} s and {peak_flops} FLOP/s")
    return flops_per_step / step_seconds / peak_flops


# ---------------------------------------------------------------------------------------------
# timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 0, seconds: float = 0.3) -> float:
    """Achieved FLOP/s of an n x n x n matmul in `dtype` on `device`: the best of a few timed bursts
    (the best, so a busy moment on a shared machine does not lower the peak and inflate MFU)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    gen = torch.Generator(device).manual_seed(0)  # not the global RNG
    a, b = (torch.randn(n, n, device=device, generator=gen).to(dtype) for _ in range(2))
    for _ in range(2):  # warm up (kernel selection, page faults)
        a @ b
    synchronize(device)
    best = 0.0
    for _ in range(3):
        count, t0 = 0, time.perf_counter()
        while True:
            a @ b
            count += 1
            synchronize(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds / 3:
                break
        best = max(best, 2 * n**3 * count / elapsed)
    return best


def summarize(times: list[float]) -> dict[str, float]:
    """mean, std (sample; 0 for one value), median, min, max of a list of seconds."""
    return {
        "mean": statistics.fmean(times),
        "std": statistics.stdev(times) if len(times) > 1 else 0.0,
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
    }


def _autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Runner:
    """One step of a mode, with per-phase timings when asked (a sync at each phase boundary)."""

    def __init__(self, model, fwd_model, cfg: ModelBenchConfig, device: torch.device, vocab: int):
        self.model, self.fwd_model, self.cfg, self.device = model, fwd_model, cfg, device
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        tokens = torch.randint(0, vocab, (cfg.batch, cfg.seq_len + 1), generator=gen).to(device)
        self.x, self.y = tokens[:, :-1], tokens[:, 1:]  # (B, T) inputs and next-token targets
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if cfg.mode == "step" else None

    def __call__(self, timed: bool = False) -> dict[str, float]:
        cfg, dev = self.cfg, self.device
        times: dict[str, float] = {}

        def mark(name: str, t0: float) -> float:
            if timed:
                synchronize(dev)
                now = time.perf_counter()
                times[name] = now - t0
                return now
            return t0

        t0 = time.perf_counter()
        if cfg.mode == "fwd":
            with torch.no_grad(), _autocast(cfg.precision, dev), torch.profiler.record_function("forward"):
                self.fwd_model(self.x)
            mark("forward", t0)
            return times
        with _autocast(cfg.precision, dev), torch.profiler.record_function("forward"):
            logits = self.fwd_model(self.x)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), self.y.flatten())
        t = mark("forward", t0)
        with torch.profiler.record_function("backward"):
            loss.backward()
        t = mark("backward", t)
        if self.opt is not None:
            with torch.profiler.record_function("optimizer"):
                self.opt.step()
            mark("optimizer", t)
        self.model.zero_grad(set_to_none=True)
        return times


# ---------------------------------------------------------------------------------------------
# memory


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process: Linux only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size: VmHWM on Linux (resettable), else getrusage's lifetime maximum."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def memory_timeline(prof, device: torch.device) -> list[tuple[float, int]]:
    """(microseconds since the first allocation, bytes allocated) after every allocation and free on
    `device` that the profiler recorded (`profile_memory=True`). Read from the profiler's event tree,
    the records torch's own memory profiler (`torch.profiler._memory_profiler`) is built from: each
    allocation event carries the allocator's running total. [] if this torch has no such tree."""
    try:
        from torch._C._profiler import _EventType

        roots = prof.profiler.kineto_results.experimental_event_tree()
    except (AttributeError, ImportError):
        return []
    points, stack = [], list(roots)
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            f = node.extra_fields
            if f.device.type == device.type:
                points.append((node.start_time_ns, f.total_allocated))
        stack.extend(node.children)
    points.sort()
    t0 = points[0][0] if points else 0
    return [((t - t0) / 1e3, int(total)) for t, total in points]


# ---------------------------------------------------------------------------------------------
# the benchmark


def run_model_bench(cfg: ModelBenchConfig, log=print) -> dict:
    """Build the model, measure the matmul peak, time the steps; profile and record memory if asked.
    Returns the result dict (see `format_result`); files go to cfg.profile_dir / cfg.memory_snapshot."""
    cfg.validate()
    model_cfg = bench_model_config(cfg.preset, cfg.seq_len, cfg.overrides)
    device = torch.device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    # outputs checked before the (possibly long) run
    if cfg.profile_dir:
        check_writable(Path(cfg.profile_dir) / "trace.json", "profiler trace", file=True)
    if cfg.memory_snapshot:
        check_writable(cfg.memory_snapshot, "memory snapshot", file=True)

    from scratchlm.model.accounting import count_params
    from scratchlm.model.transformer import TransformerLM

    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = TransformerLM(model_cfg)
    model.train(cfg.mode != "fwd")
    fwd_model = torch.compile(model) if cfg.compile else model
    run = _Runner(model, fwd_model, cfg, device, model_cfg.vocab_size)

    peak_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    log(f"measuring the {cfg.precision} matmul peak on {device} ...")
    peak = measure_matmul_peak(device, peak_dtype, cfg.peak_n)

    cuda = device.type == "cuda"
    for _ in range(cfg.warmup):
        run()
    synchronize(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        if cfg.memory_snapshot:
            torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    rss_reset = _reset_peak_rss()
    rss_before = _current_rss()

    steps: list[float] = []
    phases: dict[str, list[float]] = {}
    for _ in range(cfg.steps):
        synchronize(device)
        t0 = time.perf_counter()
        parts = run(timed=True)
        synchronize(device)
        steps.append(time.perf_counter() - t0)
        for k, v in parts.items():
            phases.setdefault(k, []).append(v)

    memory: dict = {}
    if cuda:
        memory["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        if cfg.memory_snapshot:
            _dump_cuda_snapshot(cfg.memory_snapshot)
            torch.cuda.memory._record_memory_history(enabled=None)
            memory["snapshot"] = str(cfg.memory_snapshot)
    memory["peak_rss_bytes"] = peak_rss_bytes()
    memory["peak_rss_scope"] = "timed steps" if rss_reset else "process lifetime"
    memory["rss_before_bytes"] = rss_before

    profile = None
    timeline = None
    if cfg.profile_dir or (cfg.memory_snapshot and not cuda):
        profile, timeline = _profile(run, cfg, device)
    if cfg.memory_snapshot and not cuda:
        write_json(
            cfg.memory_snapshot,
            {
                "kind": "scratchlm cpu memory record",
                "note": "torch.cuda.memory snapshots exist only for CUDA; this is peak RSS + the profiler timeline",
                "peak_rss_bytes": memory["peak_rss_bytes"],
                "peak_rss_scope": memory["peak_rss_scope"],
                "timeline_us_bytes": timeline,
            },
        )
        memory["snapshot"] = str(cfg.memory_snapshot)
    if timeline:
        memory["profiled_peak_allocated_bytes"] = max(b for _, b in timeline)

    flops = model_flops_per_step(model_cfg, cfg.batch, cfg.seq_len, cfg.mode)
    step = summarize(steps)
    tokens = cfg.batch * cfg.seq_len
    params = count_params(model_cfg)
    result = {
        "config": asdict(cfg),
        "model": {
            "d_model": model_cfg.d_model,
            "n_layers": model_cfg.n_layers,
            "n_heads": model_cfg.n_heads,
            "d_ff": model_cfg.ff_dim,
            "vocab_size": model_cfg.vocab_size,
            "params": params["total"],
        },
        "device": _device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "step_s": step,
        "phases_s": {k: summarize(v) for k, v in phases.items()},
        "times_s": steps,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / step["median"],
        "flops_per_step": flops,
        "achieved_flops": flops / step["median"],
        "peak_flops": peak,
        "peak_source": f"measured {cfg.precision} matmul n={cfg.peak_n or (8192 if cuda else 2048)}",
        "mfu": mfu(flops, step["median"], peak),
        "memory": memory,
    }
    if profile:
        result["profile"] = profile
    return result


def _current_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _dump_cuda_snapshot(path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    torch.cuda.memory._dump_snapshot(tmp)
    os.replace(tmp, path)


def _profile(run: _Runner, cfg: ModelBenchConfig, device: torch.device):
    """Record cfg.profile_steps steps under torch.profiler (after the timed ones: the profiler slows
    steps down, so it never touches the timings). Writes trace.json (chrome://tracing, ui.perfetto.dev)
    and top_ops.txt (key_averages by self CPU time, and by self CUDA time on GPU) into profile_dir."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True, profile_memory=True) as prof:
        for _ in range(cfg.profile_steps):
            run()
            synchronize(device)
            prof.step()
    timeline = memory_timeline(prof, device)
    if not cfg.profile_dir:
        return None, timeline
    out = Path(cfg.profile_dir)
    trace = out / "trace.json"
    tmp = out / f".trace.json.tmp{os.getpid()}"
    prof.export_chrome_trace(str(tmp))
    os.replace(tmp, trace)
    averages = prof.key_averages()
    tables = ["top operators by self CPU time\n" + averages.table(sort_by="self_cpu_time_total", row_limit=20)]
    if device.type == "cuda":
        tables.append(
            "top operators by self CUDA time\n" + averages.table(sort_by="self_device_time_total", row_limit=20)
        )
    text = "\n\n".join(tables)
    with atomic_write(out / "top_ops.txt", "w", encoding="utf-8") as f:
        f.write(text + "\n")
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:20]
    ops = [
        {
            "name": e.key,
            "calls": e.count,
            "self_cpu_us": e.self_cpu_time_total,
            "cpu_total_us": e.cpu_time_total,
            **({"self_cuda_us": getattr(e, "self_device_time_total", 0.0)} if device.type == "cuda" else {}),
        }
        for e in top
    ]
    return {"trace": str(trace), "table": str(out / "top_ops.txt"), "top_ops": ops, "table_text": text}, timeline


# ---------------------------------------------------------------------------------------------
# output


def _num(x: float, unit: str = "") -> str:
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.2f} {unit}".rstrip()


def format_result(r: dict) -> str:
    """The result as a small two-column table."""
    c, m, s = r["config"], r["model"], r["step_s"]
    rows = [
        (
            "model",
            f"{c['preset']}: d_model {m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads, "
            f"d_ff {m['d_ff']}, {_num(m['params'])} params",
        ),
        (
            "run",
            f"{c['mode']}, batch {c['batch']} x {c['seq_len']} tokens, {c['precision']}"
            f"{', compiled' if c['compile'] else ''}, {c['warmup']} warmup + {c['steps']} steps",
        ),
        ("device", f"{r['device']}, {r['threads']} threads"),
        ("step time", f"mean {s['mean'] * 1e3:.2f} ms, std {s['std'] * 1e3:.2f} ms, median {s['median'] * 1e3:.2f} ms"),
    ]
    for k, v in r["phases_s"].items():
        rows.append((f"  {k}", f"mean {v['mean'] * 1e3:.2f} ms, std {v['std'] * 1e3:.2f} ms"))
    rows += [
        ("tokens/s", f"{r['tokens_per_s']:,.0f}"),
        ("model FLOPs/step", _num(r["flops_per_step"], "FLOP")),
        ("achieved", _num(r["achieved_flops"], "FLOP/s")),
        ("peak", f"{_num(r['peak_flops'], 'FLOP/s')} ({r['peak_source']})"),
        ("MFU", f"{100 * r['mfu']:.1f}%"),
    ]
    mem = r["memory"]
    if "peak_allocated_bytes" in mem:
        rows.append(("peak allocated", f"{mem['peak_allocated_bytes'] / 2**20:,.1f} MiB"))
    rows.append(("peak RSS", f"{mem['peak_rss_bytes'] / 2**20:,.1f} MiB ({mem['peak_rss_scope']})"))
    if "profiled_peak_allocated_bytes" in mem:
        rows.append(("profiled peak alloc", f"{mem['profiled_peak_allocated_bytes'] / 2**20:,.1f} MiB"))
    if "snapshot" in mem:
        rows.append(("memory snapshot", mem["snapshot"]))
    if "profile" in r:
        rows.append(("trace", r["profile"]["trace"]))
        rows.append(("top operators", r["profile"]["table"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def result_json(r: dict) -> str:
    """The result as JSON (the profiler's table text left out: it is in top_ops.txt)."""
    out = dict(r)
    if "profile" in out:
        out["profile"] = {k: v for k, v in out["profile"].items() if k != "table_text"}
    return json.dumps(out, indent=2)
