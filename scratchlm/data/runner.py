"""Run a pipeline over shards: phases, resume, global stages across workers, token files, the report.

    report = run_pipeline(load_pipeline("configs/data/web-en.toml"))

Layout of the run directory:
    pipeline.toml                  the resolved config
    work/phase-NN-<stage>/         intermediate shards (+ plan.json of a global stage)
    data/<shard>.jsonl             the final shards, one JSON document per line, with provenance
    data/<shard>.stats.json        per-shard counters and the fingerprint that makes resume safe
    tokens/<shard>.bin, tokens.bin token files (with `output.tokenizer`)
    report.json, report.md         documents / bytes in and out per stage, drop reasons with examples

A shard is done when its `.stats.json` exists with the fingerprint of (its input, the phase's stage
configs, the global plan): a rerun skips it, so an interrupted run resumes where it stopped and a
changed config recomputes exactly what it affects. Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from scratchlm.config import load_config, to_toml
from scratchlm.data.pipeline import (
    Phase,
    PipelineConfig,
    Shard,
    build_phases,
    check_inputs_before_stages,
    expand_inputs,
    file_identity,
    fingerprint,
    make_shards,
)
from scratchlm.data.readers import ReadOptions
from scratchlm.data.shard_task import JSONL_OPTIONS, run_shard_task, tokenize_shard_task
from scratchlm.data.stages import GLOBAL_STAGES, check_local_stages
from scratchlm.data.stats import merge_stats
from scratchlm.errors import ScratchLMError
from scratchlm.io import DirLock, atomic_write, check_writable, read_json, write_json
from scratchlm.progress import progress_bar
from scratchlm.tokenizer.token_file import TOKENS_FORMAT


def load_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    return load_config(PipelineConfig, "data", str(path), overrides)


class _Upstream:
    """Where a phase reads shard i: the path, how to read it, and the fingerprint of its content."""

    def __init__(self, path: Path, opts: ReadOptions, fp: str):
        self.path, self.opts, self.fp = path, opts, fp


def run_pipeline(cfg: PipelineConfig, force: bool = False, progress: bool = True, log=print) -> dict[str, Any]:
    """Check the config and inputs, then run the pipeline into `cfg.output.dir`, which one process at a time
    may write (an OS lock, `io.DirLock`: a second run on the same output stops before touching it)."""
    t0 = time.perf_counter()
    phases = build_phases(cfg)
    shards = make_shards(expand_inputs(cfg.input.paths))
    check_inputs_before_stages(cfg, phases, shards)
    _refuse_inputs_inside(Path(cfg.output.dir), shards)
    tok_info = _check_tokenizer(cfg.output.tokenizer) if cfg.output.tokenizer else None
    check_local_stages([st for phase in phases for st in phase.local])  # models load (or fail) before shard 1
    check_writable(Path(cfg.output.dir) / "pipeline.toml", "pipeline output directory")
    with DirLock(cfg.output.dir, "a data pipeline run"):
        return _run_locked(cfg, phases, shards, tok_info, force, progress, log, t0)


def _run_locked(cfg, phases, shards, tok_info, force: bool, progress: bool, log, t0: float) -> dict[str, Any]:
    from scratchlm.data.executors import make_executor

    out = Path(cfg.output.dir)
    if force:
        _remove_own_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "pipeline.toml", "w", encoding="utf-8") as f:
        f.write(to_toml(cfg))

    executor = make_executor(cfg.executor, cfg.workers, cfg.ray_address)
    upstream = [_Upstream(s.path, cfg.read_options(), file_identity(s.path)) for s in shards]
    report: dict[str, Any] = {"inputs": len(shards), "executor": cfg.executor}
    phase_reports, stage_stats, plans = [], [], []
    try:
        for phase in phases:
            last = phase is phases[-1]
            out_dir = out / "data" if last else out / "work" / phase.label()
            plan = _global_plan(phase, upstream, executor, out / "work" / phase.label(), progress, log)
            results, counts = _run_phase(cfg, phase, shards, upstream, plan, out_dir, executor, progress, log)
            phase_reports.append({"phase": phase.label(), "stages": phase.names, **counts})
            stats = merge_stats([r["stats"] for r in results], cfg.examples_per_reason)
            if plan is not None:
                plans.append({"stage": phase.global_stage[0], **plan["info"]})
            stage_stats += stats
            upstream = [
                _Upstream(out_dir / f"{s.name}.jsonl", JSONL_OPTIONS, r["fingerprint"]) for s, r in zip(shards, results)
            ]
        if tok_info is not None:
            report["tokens"] = _write_tokens(cfg, shards, upstream, tok_info, out, executor, progress, log)
        report["workers"] = executor.workers  # after the work: a Ray cluster is only joined when there is some
    finally:
        executor.close()
    report.update(
        phases=phase_reports,
        global_stages=plans,
        stages=[s.to_dict() for s in stage_stats],
        seconds=round(time.perf_counter() - t0, 3),
        output=str(out / "data"),
    )
    from scratchlm.data.report import render_report

    write_json(out / "report.json", report)
    with atomic_write(out / "report.md", "w", encoding="utf-8") as f:
        f.write(render_report(report))
    return report


# ---------------------------------------------------------------------------------------------- phases


def _run_phase(cfg, phase: Phase, shards: list[Shard], upstream, plan, out_dir: Path, executor, progress, log):
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_fp = plan["fingerprint"] if plan else None
    results: list[dict | None] = [None] * len(shards)
    tasks, task_shards = [], []
    for s, up in zip(shards, upstream):
        # max_error_fraction is not part of it: a finished shard is the same whatever the limit was
        fp = fingerprint(phase.config(), up.fp, plan_fp, cfg.on_error, up.opts.__dict__)
        sidecar = out_dir / f"{s.name}.stats.json"
        if sidecar.is_file() and (out_dir / f"{s.name}.jsonl").is_file():
            prev = read_json(sidecar, "shard stats")
            if prev.get("fingerprint") == fp:
                results[s.index] = prev
                continue
        tasks.append(
            {
                "shard": s.name,
                "input": str(up.path),
                "read": up.opts,
                "record_read": phase.index == 0,
                "global": _global_task(phase, plan, s.index),
                "local": phase.local,
                "output": str(out_dir / f"{s.name}.jsonl"),
                "fingerprint": fp,
                "on_error": cfg.on_error,
                "max_error_fraction": cfg.max_error_fraction,
                "examples": cfg.examples_per_reason,
            }
        )
        task_shards.append(s)
    skipped = len(shards) - len(tasks)
    if skipped:
        log(f"{phase.label()}: {skipped} of {len(shards)} shards already done (resumed)")
    failures = _execute(executor, run_shard_task, tasks, task_shards, results, phase.label(), progress)
    _remove_stale(out_dir, {s.name for s in shards})
    broken = [err for _, err in failures if err.startswith("TooManyErrors: ")]
    if broken:
        raise ScratchLMError(
            f"{phase.label()}: {broken[0].removeprefix('TooManyErrors: ')}: the run is stopped (fix the stage, or "
            "raise max_error_fraction to accept the drops); finished shards are kept"
        )
    if failures:
        lines = "; ".join(f"{name}: {err}" for name, err in failures[:3])
        raise ScratchLMError(
            f"{phase.label()}: {len(failures)} of {len(shards)} shards failed ({lines}); finished shards are kept, "
            "rerun the same command to resume"
        )
    return results, {"shards": len(shards), "processed": len(tasks), "skipped": skipped}


def _execute(executor, fn, tasks, task_shards, results, label, progress) -> list[tuple[str, str]]:
    from scratchlm.data.executors import TaskFailure

    failures = []
    docs = 0
    t0 = time.perf_counter()
    with (
        progress_bar(progress, total=len(tasks), desc=label, unit="shard") as bar,
        contextlib.closing(executor.map(fn, tasks)) as results_iter,
    ):
        for i, res in results_iter:
            shard = task_shards[i]
            if isinstance(res, TaskFailure):
                failures.append((shard.name, res.error))
                if res.error.startswith("TooManyErrors: "):
                    break  # a broken stage: stop the run (pending shards are cancelled by closing the map)
            else:
                results[shard.index] = res
                docs += res.get("docs_written", 0)
                bar.set_postfix_str(f"{docs / max(time.perf_counter() - t0, 1e-9):,.0f} docs/s out")
            bar.update(1)
    return failures


def _refuse_inputs_inside(out: Path, shards: list[Shard]) -> None:
    """An input under the output directory could be deleted by --force or read back as an input by a
    rerun (the run's own outputs): refused before anything runs."""
    root = out.resolve()
    for s in shards:
        if root in Path(s.path).resolve().parents:
            raise ScratchLMError(
                f"input {s.path} is inside the output directory {out}: move it, or choose another output.dir"
            )


def _remove_own_outputs(out: Path) -> None:
    """--force: delete what a previous run wrote, recognised by its own marks, and nothing else: each shard's
    `.jsonl` with its `.stats.json` in data/ and work/phase-*/, a global stage's plan files, token files with
    a scratchlm token sidecar; then the directories left empty. Other files (a user's notes) stay."""
    shard_dirs = [out / "data", *sorted((out / "work").glob("phase-*"))]
    for d in shard_dirs:
        for stats in d.glob("*.stats.json"):
            stats.with_name(stats.name[: -len(".stats.json")] + ".jsonl").unlink(missing_ok=True)
            stats.unlink()
        for name in ("plan.json", "duplicated_lines.npy"):
            (d / name).unlink(missing_ok=True)
    for sidecar in [*(out / "tokens").glob("*.bin.json"), out / "tokens.bin.json"]:
        try:
            own = read_json(sidecar, "token sidecar").get("format") == TOKENS_FORMAT
        except (ScratchLMError, AttributeError):
            own = False
        if own:
            sidecar.with_name(sidecar.name[: -len(".json")]).unlink(missing_ok=True)
            sidecar.unlink()
    for d in [*shard_dirs, out / "work", out / "tokens"]:
        with contextlib.suppress(OSError):  # not empty (someone else's files) or absent: left as is
            d.rmdir()


def _remove_stale(out_dir: Path, names: set[str]) -> None:
    """Shard files of inputs no longer in the run (the input list changed) would pollute the output."""
    for p in out_dir.glob("[0-9][0-9][0-9][0-9][0-9]-*"):
        if p.name.split(".")[0] not in names and p.is_file():  # shard names have no dots
            p.unlink()


# ---------------------------------------------------------------------------------------------- global stages


def _global_plan(phase: Phase, upstream, executor, work: Path, progress, log) -> dict | None:
    """Map over shards, reduce on the driver; the plan is saved and reused while its fingerprint holds."""
    if phase.global_stage is None:
        return None
    name, gcfg = phase.global_stage
    fp = fingerprint(phase.config()[0], [u.fp for u in upstream])
    plan_path = work / "plan.json"
    if plan_path.is_file():
        prev = read_json(plan_path, "global stage plan")
        if prev.get("fingerprint") == fp:
            log(f"{phase.label()}: reusing the {name} plan")
            return prev
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def run_map(fn, args, step=None):
        """The stage's map step with a progress bar, or a secondary one (`step`, e.g. "verify") without."""
        return _map_all(executor, fn, args, step or name, progress and step is None)

    p = GLOBAL_STAGES[name].plan(gcfg, [(str(u.path), u.opts) for u in upstream], run_map)
    plan = {"fingerprint": fp, "stage": name, "info": {**p.info, "seconds": round(time.perf_counter() - t0, 3)}}
    plan["drops"] = [{str(k): v for k, v in d.items()} for d in p.drops]
    if p.duplicated_lines is not None:
        import numpy as np

        with atomic_write(work / "duplicated_lines.npy", "wb") as f:
            np.save(f, p.duplicated_lines)
        plan["duplicated_lines"] = str(work / "duplicated_lines.npy")
    write_json(plan_path, plan)
    log(f"{phase.label()}: {name} plan: {plan['info']}")
    return plan


def _map_all(executor, fn, args, label, progress) -> list:
    from scratchlm.data.executors import TaskFailure

    out: list = [None] * len(args)
    with progress_bar(progress, total=len(args), desc=f"{label} (map)", unit="shard") as bar:
        for i, res in executor.map(fn, args):
            if isinstance(res, TaskFailure):
                raise ScratchLMError(f"{label}: map step failed on {args[i][0]}: {res.error}")
            out[i] = res
            bar.update(1)
    return out


def _global_task(phase: Phase, plan: dict | None, shard_index: int) -> dict | None:
    if plan is None:
        return None
    name, gcfg = phase.global_stage
    return {
        "stage": name,
        "config": gcfg,
        "drops": {int(k): v for k, v in plan["drops"][shard_index].items()},
        "duplicated_lines": plan.get("duplicated_lines"),
    }


# ---------------------------------------------------------------------------------------------- tokens


def _check_tokenizer(path: str) -> dict:
    from scratchlm.tokenizer import load_tokenizer

    tok = load_tokenizer(Path(path))
    if tok.end_of_text is None:
        raise ScratchLMError(f"tokenizer {path} has no special token to separate documents (e.g. <|endoftext|>)")
    return {"path": str(Path(path).resolve()), "hash": tok.hash}


def _write_tokens(cfg, shards, upstream, tok_info, out: Path, executor, progress, log) -> dict:
    tok_dir = out / "tokens"
    tok_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict | None] = [None] * len(shards)
    tasks, task_shards = [], []
    for s, up in zip(shards, upstream):
        fp = fingerprint(up.fp, tok_info["hash"])
        done = tok_dir / f"{s.name}.task.json"
        if done.is_file() and read_json(done, "token task record").get("fingerprint") == fp:
            results[s.index] = read_json(done, "token task record")
            continue
        tasks.append(
            {
                "input": str(up.path),
                "output": str(tok_dir / f"{s.name}.bin"),
                "tokenizer": tok_info["path"],
                "fingerprint": fp,
            }
        )
        task_shards.append(s)
    failures = _execute(executor, tokenize_shard_task, tasks, task_shards, results, "tokenize", progress)
    _remove_stale(tok_dir, {s.name for s in shards})
    if failures:
        raise ScratchLMError(
            f"tokenize: {len(failures)} shards failed ({failures[0][0]}: {failures[0][1]}); rerun to resume"
        )
    info = {"files": [r["output"] for r in results if r["tokens"]], "tokens": sum(r["tokens"] for r in results)}
    if cfg.output.merge_tokens and info["files"]:
        info["merged"] = str(_merge_tokens([Path(f) for f in info["files"]], out / "tokens.bin"))
    log(
        f"tokens: {info['tokens']:,} in {len(info['files'])} shard files"
        + (f" -> {info.get('merged')}" if "merged" in info else "")
    )
    return info


def _merge_tokens(files: list[Path], target: Path) -> Path:
    from scratchlm.tokenizer.token_file import read_token_meta, sidecar_path

    metas = [read_token_meta(f) for f in files]
    if len({m["tokenizer_hash"] for m in metas}) != 1 or len({m["dtype"] for m in metas}) != 1:
        raise ScratchLMError("token shards disagree on tokenizer or dtype; rerun with --force")
    with atomic_write(target, "wb") as dst:
        for f in files:
            with open(f, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
        meta = dict(metas[0])
        meta.update(
            count=sum(m["count"] for m in metas),
            documents=sum(m["documents"] for m in metas),
            source=[str(f) for f in files],
            source_bytes=sum(m["source_bytes"] for m in metas),
            invalid_utf8_bytes=sum(m["invalid_utf8_bytes"] for m in metas),
            seconds=round(sum(m["seconds"] for m in metas), 3),
        )
        meta["bytes_per_token"] = meta["source_bytes"] / max(meta["count"], 1)
        write_json(sidecar_path(target), meta)
    return target


def summary_line(report: dict) -> str:
    stages = report["stages"]
    first, last = stages[0], stages[-1]
    docs_in = first["docs_out"] if first["name"] == "read" else first["docs_in"]
    return (
        f"{docs_in:,} documents in, {last['docs_out']:,} out "
        f"({last['bytes_out'] / 1e6:,.1f} MB) in {report['seconds']:.1f} s -> {report['output']}"
    )


def load_report(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "report.json").read_text(encoding="utf-8"))
