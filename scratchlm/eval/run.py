"""`scratchlm eval run`: parse task specs, score a model on each, write results.json and a report card.

Task specs (comma-separated on the command line):

    mmlu                 MMLU, 5-shot from dev, questions from `val` (see mmlu.py)
    mmlu:anatomy+virology   only these subjects
    mmlu_cloze           MMLU as answer texts (no letters), 0-shot, acc_norm: small models' formulation
    gsm8k                GSM8K, 5-shot (chat template with --chat), greedy, exact match (see gsm8k.py)
    bpb:FILE             bits per byte of a text file (sliding window, see bpb.py); FILE may be a
                         name under the shared data texts (owt_mini, tinystories_val, tinyshakespeare)
    mc:FILE.jsonl        a user's multiple-choice task (see tasks.py); HellaSwag/ARC/PIQA files
                         converted by `scratchlm eval download` / `convert` (mc_tasks.py)
    task:FILE.toml       a custom task described in TOML: multiple choice or generation (custom.py)

Resume: every finished example is appended to `OUT/cache/<task>.jsonl` (keyed by a hash of its
prompt and choices), so an interrupted run restarted with the same --out scores only what is
missing; a torn last line (the interruption) is dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.progress import progress_bar

log = logging.getLogger(__name__)

SHARED = Path(os.environ.get("SCRATCHLM_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
TEXTS = {
    "owt_mini": "text/owt_mini.txt",
    "tinystories_val": "text/tinystories_val.txt",
    "tinyshakespeare": "text/tinyshakespeare.txt",
}
KINDS = ("mmlu", "mmlu_cloze", "gsm8k", "bpb", "mc", "task")


@dataclass
class Settings:
    limit: int | None = None  # examples per task (per subject for MMLU)
    num_fewshot: int | None = None  # None: the task's default (5)
    batch_size: int = 8
    seed: int = 1234
    chat: bool = False  # GSM8K through the chat template
    max_tokens: int = 256
    truncate: str = "left"
    context: int | None = None  # bpb window (default: the model's context)
    stride: int | None = None  # bpb stride (default: the window, disjoint windows)
    mmlu_dir: Path = field(default_factory=lambda: SHARED / "instruct" / "mmlu")
    mmlu_split: str = "val"
    gsm8k_dir: Path = field(default_factory=lambda: SHARED / "instruct")
    chunk: int = 32  # examples between cache flushes
    progress: bool = True


def parse_tasks(spec: str) -> list[tuple[str, str]]:
    """ "mmlu,bpb:owt_mini" -> [("mmlu", ""), ("bpb", "owt_mini")]; unknown kinds are an error naming them."""
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        kind, _, arg = item.partition(":")
        if kind not in KINDS:
            raise ScratchLMError(
                f"unknown task {item!r}: expected one of mmlu, mmlu_cloze, gsm8k, bpb:FILE, mc:FILE.jsonl, "
                "task:FILE.toml"
            )
        if kind in ("bpb", "mc", "task") and not arg:
            raise ScratchLMError(f"task {kind!r} needs a file: {kind}:FILE")
        out.append((kind, arg))
    if not out:
        raise ScratchLMError("no tasks given")
    return out


def task_name(kind: str, arg: str) -> str:
    return kind if not arg else f"{kind}_{arg.replace('+', '_') if kind.startswith('mmlu') else Path(arg).stem}"


def text_file(arg: str) -> Path:
    if arg in TEXTS:
        path = SHARED / TEXTS[arg]
    else:
        path = Path(arg)
    if not path.is_file():
        raise ScratchLMError(f"text file not found: {path}")
    return path


class ResultCache:
    """Per-example records of one task, appended as they finish (JSONL), read back on resume."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        if path.is_file():
            lines = path.read_text(encoding="utf-8").split("\n")
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    if n >= len(lines) - 1:  # a torn last line: the run was interrupted mid-write
                        log.warning("%s: dropping an incomplete last line", path)
                        continue
                    raise ScratchLMError(f"{path}:{n}: corrupt cache line; delete the file to rescore") from None
                self.records[rec["key"]] = rec
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, recs: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                self.records[r["key"]] = r
            f.flush()
            os.fsync(f.fileno())


def key_of(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:16]


def run_mc(scorer, examples, cache: ResultCache, settings: Settings, name: str) -> tuple[dict, list[dict]]:
    from scratchlm.eval.tasks import evaluate_mc, summarise

    keyed = [(key_of(ex.context, ex.choices), ex) for ex in examples]
    todo = [(k, ex) for k, ex in keyed if k not in cache.records]
    if len(todo) < len(keyed):
        log.info("%s: %d of %d examples cached, scoring %d", name, len(keyed) - len(todo), len(keyed), len(todo))
    total = sum(len(ex.choices) for _, ex in todo)
    with progress_bar(settings.progress, total=total, desc=name, unit="req") as bar:
        for lo in range(0, len(todo), settings.chunk):
            part = todo[lo : lo + settings.chunk]
            _, recs = evaluate_mc(scorer, [ex for _, ex in part], bar.update)
            cache.add([{"key": k, **r} for (k, _), r in zip(part, recs)])
    records = [cache.records[k] for k, _ in keyed]
    return summarise(records), records


def run_gsm8k(llm, chat, examples, cache: ResultCache, settings: Settings) -> tuple[dict, list[dict]]:
    from scratchlm.eval import gsm8k

    keyed = [(key_of(ex.prompt, settings.max_tokens), ex) for ex in examples]
    todo = [(k, ex) for k, ex in keyed if k not in cache.records]
    with progress_bar(settings.progress, total=len(todo), desc="gsm8k", unit="ex") as bar:
        for lo in range(0, len(todo), settings.chunk):
            part = todo[lo : lo + settings.chunk]
            _, recs = gsm8k.evaluate(llm, chat, [ex for _, ex in part], settings.max_tokens, truncate=settings.truncate)
            cache.add([{"key": k, **r} for (k, _), r in zip(part, recs)])
            bar.update(len(part))
    records = [cache.records[k] for k, _ in keyed]
    return gsm8k.summarise(records), records


def run_custom_generate(llm, chat, spec, cache: ResultCache, settings: Settings, name: str):
    from scratchlm.eval import custom

    its = custom.items(spec, settings.limit)
    keyed = [(key_of(custom.text_prompt(spec, it), spec.chat, spec.max_tokens, spec.stop), it) for it in its]
    todo = [(k, it) for k, it in keyed if k not in cache.records]
    with progress_bar(settings.progress, total=len(todo), desc=name, unit="ex") as bar:
        for lo in range(0, len(todo), settings.chunk):
            part = todo[lo : lo + settings.chunk]
            recs = custom.generate(llm, chat, spec, [it for _, it in part])
            cache.add([{"key": k, **r} for (k, _), r in zip(part, recs)])
            bar.update(len(part))
    records = [cache.records[k] for k, _ in keyed]
    return custom.summarise(records, spec.metric), records


def evaluate(
    model_spec: str, tasks: str, out: str | Path, settings: Settings | None = None, loaded: tuple | None = None
) -> dict:
    """Run `tasks` on the model `model_spec` and write OUT/results.json, OUT/report.md and plots.
    `loaded`: an already loaded (model, chat), `model_spec` then only names it (checkpoints.py)."""
    import torch

    from scratchlm.eval import report
    from scratchlm.io import check_writable, write_json
    from scratchlm.model.model_dir import load_model

    settings = settings or Settings()
    specs = parse_tasks(tasks)
    out = Path(out)
    check_writable(out, "--out")
    # check the inputs before the (slow) model load
    for kind, arg in specs:
        if kind == "bpb":
            text_file(arg)
        if kind == "mc" and not Path(arg).is_file():
            raise ScratchLMError(f"task file not found: {arg}")
        if kind == "task":
            from scratchlm.eval import custom

            custom.items(custom.load_spec(arg), settings.limit)  # the TOML and every row, checked now
    model, chat = loaded if loaded is not None else load_model(model_spec)
    model.eval()
    results = {
        "model": model_spec,
        "params": sum(p.numel() for p in model.parameters()),
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
        "tasks": {},
    }
    scorer = None
    for kind, arg in specs:
        name = task_name(kind, arg)
        t0 = time.perf_counter()
        cache = ResultCache(out / "cache" / f"{name}.jsonl")
        shots = settings.num_fewshot
        if kind in ("mmlu", "mmlu_cloze", "mc"):
            from scratchlm.eval import mmlu
            from scratchlm.eval.loglik import Scorer
            from scratchlm.eval.tasks import jsonl_mc_task

            scorer = scorer or Scorer(model, chat, settings.batch_size, truncate=settings.truncate)
            metric = "acc"
            if kind.startswith("mmlu"):
                cloze = kind == "mmlu_cloze"
                shots = (0 if cloze else 5) if shots is None else shots
                only = arg.split("+") if arg else None
                fmt = "cloze" if cloze else "mc"
                examples = mmlu.load(settings.mmlu_dir, settings.mmlu_split, shots, settings.limit, only, fmt)
                metric = "acc_norm" if cloze else "acc"
            else:
                shots = shots or 0
                examples = jsonl_mc_task(arg, settings.limit, shots, settings.seed)
            metrics, records = run_mc(scorer, examples, cache, settings, name)
            metrics["metric"] = metric
        elif kind == "task":
            from scratchlm.eval import custom

            spec = custom.load_spec(arg)
            shots = spec.num_fewshot
            if spec.kind == "multiple_choice":
                from scratchlm.eval.loglik import Scorer

                scorer = scorer or Scorer(model, chat, settings.batch_size, truncate=settings.truncate)
                metrics, records = run_mc(scorer, custom.mc_examples(spec, settings.limit), cache, settings, name)
                metrics["metric"] = spec.metric
            else:
                from scratchlm.infer.engine import LLM

                metrics, records = run_custom_generate(LLM(model, chat), chat, spec, cache, settings, name)
        elif kind == "gsm8k":
            from scratchlm.eval import gsm8k
            from scratchlm.infer.engine import LLM

            shots = 5 if shots is None else shots
            d = settings.gsm8k_dir
            examples = gsm8k.load(
                d / "gsm8k_test.jsonl", d / "gsm8k_train.jsonl", shots, settings.limit, settings.seed, settings.chat
            )
            metrics, records = run_gsm8k(LLM(model, chat), chat, examples, cache, settings)
            metrics["metric"] = "exact_match"
        else:  # bpb
            from scratchlm.eval.bpb import bits_per_byte

            text = text_file(arg).read_text(encoding="utf-8")
            if settings.limit:
                from scratchlm.eval.bpb import SEPARATOR, documents

                text = SEPARATOR.join(documents(text)[: settings.limit])
            with torch.no_grad():
                metrics = bits_per_byte(
                    model, chat, text, context=settings.context or model.config.context_length, stride=settings.stride
                )
            metrics["n"] = metrics["documents"]
            metrics["metric"] = "bits_per_byte"
            records = []
            shots = 0
        metrics["num_fewshot"] = shots
        metrics["seconds"] = time.perf_counter() - t0
        results["tasks"][name] = metrics
        if records:
            report.write_jsonl(out / "samples" / f"{name}.jsonl", records)
        log.info(
            "%s: %s = %.4f (n=%d, %.0f s)",
            name,
            metrics["metric"],
            metrics[metrics["metric"]],
            metrics["n"],
            metrics["seconds"],
        )
    write_json(out / "results.json", results)
    report.write_report(out, results)
    return results


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return f"{platform.system()} {cpu}, {threads} torch threads" + (f", {gpu}" if gpu else "")
