"""Shared helpers for the benchmark scripts: corpora, measured subprocess runs, machine info, reports.

Nothing runs at import time. Every measured run is a fresh `python -m benchmarks.<script> --worker SPEC`
subprocess, so interpreter start-up, imports and memory are those of a real run; the parent samples
the summed RSS of that process and all its children every ~20 ms.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SCRATCHLM_SHARED_DATA", REPO.parent / "shared" / "data"))
TEXT = DATA / "text"
OWT_MINI = TEXT / "owt_mini.txt"
GPT2_VOCAB = DATA / "tokenizer" / "gpt2_vocab.json"
GPT2_MERGES = DATA / "tokenizer" / "gpt2_merges.txt"
WORK = REPO / "benchmarks" / "_work"  # git-ignored scratch space
RESULTS = REPO / "benchmarks" / "results"
EOT = "<|endoftext|>"
MB = 1e6  # throughput and sizes in decimal megabytes
SAMPLE_S = 0.02


# ---------------------------------------------------------------------------------------- corpora
def check_data() -> None:
    if not OWT_MINI.is_file():
        sys.exit(f"shared data not found at {DATA} (set SCRATCHLM_SHARED_DATA)")


def concat_corpus(target_bytes: int, name: str) -> Path:
    """owt_mini + tinystories_val + tinyshakespeare repeated (EOT between files) until >= target_bytes.

    Built once into benchmarks/_work/ and reused while its size still matches. The repeats add no new
    pre-tokens: the distinct pre-token table (what BPE training keeps in memory) stays that of ~7 MB.
    """
    parts = [(TEXT / f).read_bytes() for f in ("owt_mini.txt", "tinystories_val.txt", "tinyshakespeare.txt")]
    sep = EOT.encode()
    unit = sep.join(parts) + sep
    rounds = -(-target_bytes // len(unit))
    path = WORK / name
    if path.is_file() and path.stat().st_size == rounds * len(unit):
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for _ in range(rounds):
            f.write(unit)
    tmp.replace(path)
    return path


def prefix_slice(src: Path, max_bytes: int, name: str) -> Path:
    """The first <= max_bytes of `src`, cut just after an EOT (documents stay whole), in benchmarks/_work/."""
    data = src.read_bytes()[:max_bytes]
    end = data.rfind(EOT.encode())
    data = data[: end + len(EOT)] if end > 0 else data[: len(data.decode("utf-8", "ignore").encode())]
    path = WORK / name
    if not (path.is_file() and path.read_bytes() == data):
        WORK.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------- measured runs
def _rss(proc: psutil.Process) -> tuple[int, int]:
    """(RSS of proc + all its descendants, RSS of proc alone) in bytes; 0 for processes that just exited."""
    try:
        main = proc.memory_info().rss
        kids = proc.children(recursive=True)
    except psutil.Error:
        return 0, 0
    total = main
    for k in kids:
        try:
            total += k.memory_info().rss
        except psutil.Error:
            pass
    return total, main


def run_measured(
    module: str, spec: dict, env: dict[str, str] | None = None, timeout: float = 3600, sample_s: float = SAMPLE_S
) -> dict:
    """Run `python -m module --worker SPEC` and return its JSON result plus RSS peaks and wall times.

    The worker writes its result to spec["result_path"]; it may report `t_end` (time.time() at the end
    of the measured part): peaks and `wall_s` then cover start-up to t_end only, not later checks.
    """
    with tempfile.TemporaryDirectory(prefix="bench_", dir=WORK) as tmp:
        spec = dict(spec, result_path=str(Path(tmp) / "result.json"))
        err_path = Path(tmp) / "stderr.txt"
        cmd = [sys.executable, "-m", module, "--worker", json.dumps(spec)]
        samples: list[tuple[float, int, int]] = []
        t0 = time.time()
        with open(err_path, "wb") as err:
            proc = psutil.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=err, stderr=err)
            while proc.poll() is None:
                samples.append((time.time(), *_rss(proc)))
                if time.time() - t0 > timeout:
                    proc.kill()
                time.sleep(sample_s)
        t_exit = time.time()
        if proc.returncode != 0:
            tail = err_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker failed (rc {proc.returncode}): {' '.join(cmd)}\n{tail}")
        result = json.loads(Path(spec["result_path"]).read_text())
    t_end = result.get("t_end", t_exit)
    window = [s for s in samples if s[0] <= t_end] or samples
    result["wall_s"] = t_end - t0
    result["process_s"] = t_exit - t0
    result["peak_rss_all_mb"] = max((s[1] for s in window), default=0) / MB
    result["peak_rss_main_mb"] = max((s[2] for s in window), default=0) / MB
    result["rss_samples"] = len(window)
    return result


def write_result(spec: dict, result: dict) -> None:
    Path(spec["result_path"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------- reporting
def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ids_digest(ids) -> str:
    """Short sha256 of a token-id sequence (as uint32), to compare ids across implementations."""
    import numpy as np

    return hashlib.sha256(np.asarray(ids, dtype=np.uint32).tobytes()).hexdigest()[:16]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):
        return "not installed"


def _git_commit() -> str:
    """Short HEAD commit, '+ uncommitted changes' if scratchlm/ differs from it (read-only git calls)."""

    def git(*args: str) -> str:
        cmd = ["git", "--no-optional-locks", *args]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD") or "no commit"
        dirty = git("status", "--porcelain", "--", "scratchlm")
    except OSError:
        return "unknown"
    return commit + (" + uncommitted changes in scratchlm/" if dirty else "")


def _c_core_stale(merge_loop) -> bool:
    """True if the compiled merge core is older than its C source (rebuild: python setup.py build_ext --inplace)."""
    if merge_loop._bpe_core is None:
        return False
    src = Path(merge_loop.__file__).with_name("_bpe_core.c")
    return src.is_file() and src.stat().st_mtime > Path(merge_loop._bpe_core.__file__).stat().st_mtime


# The code these benchmarks measure: the tokenizer package and the helpers it imports.
MEASURED_SOURCES = ("scratchlm/tokenizer/*.py", "scratchlm/tokenizer/*.c", "scratchlm/io.py", "scratchlm/progress.py")


def source_digest() -> str:
    """Short sha256 of the measured scratchlm sources: ties a result to the code it measured."""
    h = hashlib.sha256()
    for f in sorted(f for pattern in MEASURED_SOURCES for f in REPO.glob(pattern)):
        if f.is_file():
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def footer(info: dict, t0: float) -> str:
    """Total time and load at the end (the machine is shared), and a warning if the measured sources changed."""
    text = f"Total benchmark time {time.time() - t0:.0f} s"
    if hasattr(os, "getloadavg"):
        text += ", load average at end {:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())
    text += "."
    if source_digest() != info["scratchlm_source_sha256"]:
        text += " WARNING: scratchlm tokenizer sources changed during the run; rows may mix code versions: rerun."
    return text + "\n"


def machine_info() -> dict:
    from scratchlm.tokenizer import merge_loop

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "scratchlm": _version("scratchlm"),
        "scratchlm_c_core": merge_loop._bpe_core is not None,
        "scratchlm_c_core_older_than_source": _c_core_stale(merge_loop),
        "tokenizers": _version("tokenizers"),
        "tiktoken": _version("tiktoken"),
        "regex": _version("regex"),
        "psutil": psutil.__version__,
        "git_commit": _git_commit(),
        "scratchlm_source_sha256": source_digest(),
    }


def rerun_command(module: str) -> str:
    return " ".join(["python -m", module, *sys.argv[1:]])


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(x) -> str:
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_block(info: dict, command: str) -> str:
    load = info["loadavg_at_start"]
    return "\n".join(
        [
            f"- date: {info['date']}; git commit: {info['git_commit']};"
            f" scratchlm tokenizer sources sha256 {info['scratchlm_source_sha256']}",
            f"- CPU: {info['cpu']}, {info['cores_usable']} usable cores, {info['ram_gb']} GiB RAM"
            + (f", load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}" if load else ""),
            f"- python {info['python']}, scratchlm {info['scratchlm']}"
            f" (C merge core built: {info['scratchlm_c_core']}"
            + (", OLDER than its .c source" if info["scratchlm_c_core_older_than_source"] else "")
            + f"), tokenizers {info['tokenizers']},"
            f" tiktoken {info['tiktoken']}, regex {info['regex']}",
            f"- rerun (from the repository root, venv active): `{command}`",
        ]
    )


def save_report(out_dir: Path, stem: str, markdown: str, raw: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, text in (
        (out_dir / f"{stem}.md", markdown),
        (out_dir / f"{stem}.json", json.dumps(raw, indent=2, default=str) + "\n"),
    ):
        tmp = path.with_suffix(path.suffix + ".tmp")  # a killed run leaves the last complete result, not half a file
        tmp.write_text(text)
        tmp.replace(path)
    print(markdown)
    print(f"wrote {out_dir / (stem + '.md')} and {stem}.json")
