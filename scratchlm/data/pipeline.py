"""A pipeline file: inputs, outputs, executor, and the list of stages, checked before any work starts.

    executor = "local"            # or "ray"
    workers = 0                   # 0 = one per core

    [input]
    paths = ["crawl/*.warc.gz"]   # files, directories or glob patterns; each file is one shard

    [output]
    dir = "runs/web-en"           # data/ (final shards), work/ (intermediate phases), report.{md,json}
    tokenizer = "tok/"            # optional: also write token files with this tokenizer

    [[stages]]
    stage = "extract"
    [[stages]]
    stage = "minhash_dedup"
    jaccard_threshold = 0.8

The stage list is cut into phases at each global stage: phase k = (global stage k, if any) + the local
stages after it. A phase reads the previous phase's shards and writes its own, so every phase boundary
is a resume point.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scratchlm.config import to_dict
from scratchlm.data.readers import ReadOptions
from scratchlm.data.stages import is_global, parse_stage
from scratchlm.errors import ScratchLMError


@dataclass
class InputConfig:
    paths: list[str] = field(default_factory=list)  # files, directories (every file inside) or glob patterns
    format: Literal["auto", "warc", "wet", "jsonl", "text"] = "auto"  # auto: from each file name
    text_field: str = "text"  # JSONL: the key holding the text
    text_separator: str = "<|endoftext|>"  # plain text: document separator ("" = one document per file)
    html_only: bool = True  # WARC: drop non-HTML responses (reason not_html)
    ok_status_only: bool = True  # WARC: drop non-2xx responses (reason http_status)


@dataclass
class OutputConfig:
    dir: str = ""  # the run directory
    tokenizer: str = ""  # a tokenizer directory: also write token files (tokens/<shard>.bin + tokens.bin)
    merge_tokens: bool = True  # concatenate the shard token files into tokens.bin for training


@dataclass
class PipelineConfig:
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    executor: Literal["local", "ray"] = "local"  # where shard tasks run
    workers: int = 0  # local processes (0 = one per core); with Ray, CPUs of a local Ray it starts
    ray_address: str = ""  # Ray cluster to join ("auto", "ray://head:10001"); "" = start a local Ray
    on_error: Literal["skip", "raise"] = "skip"  # a stage raising on a document: count and drop it, or fail the shard
    # skip: a stage raising on more than this fraction of a shard's documents stops the run (1 = never)
    max_error_fraction: float = 0.1
    examples_per_reason: int = 3  # dropped documents kept as examples in the report, per reason
    stages: list[dict[str, Any]] = field(default_factory=list)  # the [[stages]] tables, in order

    def validate(self) -> None:
        if not self.input.paths:
            raise ScratchLMError("the pipeline has no inputs: set input.paths (files, directories or globs)")
        if not self.output.dir:
            raise ScratchLMError("the pipeline has no output directory: set output.dir")
        if self.workers < 0:
            raise ScratchLMError(f"workers must be >= 0, got {self.workers}")
        if not 0 <= self.max_error_fraction <= 1:
            raise ScratchLMError(f"max_error_fraction must be in [0, 1], got {self.max_error_fraction}")
        if self.examples_per_reason < 0:
            raise ScratchLMError(f"examples_per_reason must be >= 0, got {self.examples_per_reason}")
        for i, table in enumerate(self.stages):
            parse_stage(table, f"stages[{i}]")

    def read_options(self) -> ReadOptions:
        i = self.input
        return ReadOptions(i.format, i.text_field, i.text_separator, i.html_only, i.ok_status_only)


@dataclass
class Shard:
    index: int
    name: str  # "00003-<input stem>": output files are <name>.jsonl
    path: Path  # the raw input file


@dataclass
class Phase:
    index: int
    global_stage: tuple[str, Any] | None  # (name, config) or None
    local: list[tuple[str, Any]]  # (name, config) in order

    @property
    def names(self) -> list[str]:
        return ([self.global_stage[0]] if self.global_stage else []) + [n for n, _ in self.local]

    def label(self) -> str:
        return f"phase-{self.index:02d}-" + (self.global_stage[0] if self.global_stage else "local")

    def config(self) -> list[dict[str, Any]]:
        stages = ([self.global_stage] if self.global_stage else []) + self.local
        return [{"stage": n, **to_dict(c)} for n, c in stages]


def build_phases(cfg: PipelineConfig) -> list[Phase]:
    phases = [Phase(0, None, [])]
    for i, table in enumerate(cfg.stages):
        name, stage_cfg = parse_stage(table, f"stages[{i}]")
        if is_global(name):
            phases.append(Phase(len(phases), (name, stage_cfg), []))
        else:
            phases[-1].local.append((name, stage_cfg))
    if not phases[0].local and len(phases) > 1:
        phases = phases[1:]
        for k, p in enumerate(phases):
            p.index = k
    return phases


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by `patterns` (globs and directories expanded, sorted), each once, in pattern order."""
    seen: dict[Path, None] = {}
    for pat in patterns:
        pat = os.path.expanduser(pat)
        if any(c in pat for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(pat, recursive=True))
        elif Path(pat).is_dir():
            matches = sorted(p for p in Path(pat).rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            matches = [Path(pat)]
        if not matches:
            raise ScratchLMError(f"input {pat!r} matches no file")
        for p in matches:
            if not p.is_file():
                raise ScratchLMError(f"input file not found: {p}")
            if p.stat().st_size == 0:
                continue  # an empty file has no documents
            seen.setdefault(p.resolve(), None)
    if not seen:
        raise ScratchLMError(f"no non-empty input files in {patterns}")
    return list(seen)


def make_shards(paths: list[Path]) -> list[Shard]:
    return [Shard(i, f"{i:05d}-{p.name.split('.')[0] or 'shard'}", p) for i, p in enumerate(paths)]


def file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_inputs_before_stages(cfg: PipelineConfig, phases: list[Phase], shards: list[Shard]) -> None:
    """WARC responses are HTML: something must turn them into text before any other stage reads text."""
    from scratchlm.data.readers import detect_format

    fmt = cfg.input.format
    warc = fmt == "warc" or (fmt == "auto" and any(detect_format(s.path) == "warc" for s in shards))
    first = phases[0].names[0] if phases[0].names else None
    if warc and first != "extract":
        raise ScratchLMError(
            'WARC inputs hold HTML: the first stage must be `extract` (add [[stages]] stage = "extract" first)'
        )
