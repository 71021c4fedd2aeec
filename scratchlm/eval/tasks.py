"""Multiple-choice tasks: examples, few-shot prompts, metrics, and the file formats users bring.

A multiple-choice example is a context, a list of choices (continuations) and the gold index:

    MCExample(context="...Answer:", choices=[" A", " B", " C", " D"], gold=2, group="anatomy")

Metrics (the definitions lm-evaluation-harness uses):
- `acc`: the choice with the highest summed log-probability is the gold one;
- `acc_norm`: the same with each sum divided by the choice's length in UTF-8 bytes (per byte, not per
  token, so the figure does not depend on the tokenizer), counting the choice's text without the
  target delimiter before it (" Paris" counts 5 bytes): lm-eval's `acc_norm` divides by the characters
  of that same text and its `acc_bytes` by its bytes, so the three agree on ASCII choices;
- standard error of a mean of 0/1 scores: sqrt(p (1 - p) / (n - 1)), the sample standard error.

Few-shot prompts: `fewshot` examples rendered with their gold answer, joined by `fewshot_delimiter`
(default a blank line, "\\n\\n"), then the question; `target_delimiter` (default " ") sits between
a context and its choice.

User tasks in JSONL (`mc:FILE.jsonl`), one object a line:

    {"question": "...", "choices": ["...", "..."], "answer": 1}   # answer: an index or the choice text

HellaSwag/ARC/PIQA-style files converted to these fields run as they are; an optional "context" field
replaces the question as the text the choices continue.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.io import check_input_file


@dataclass
class MCExample:
    context: str
    choices: list[str]
    gold: int
    group: str = ""
    meta: dict = field(default_factory=dict)
    target_delimiter: str = " "  # the prefix each choice carries; not counted in acc_norm's length

    def check(self, where: str) -> MCExample:
        if len(self.choices) < 2:
            raise ScratchLMError(
                f"{where}: a multiple-choice example needs at least 2 choices, got {len(self.choices)}"
            )
        if not 0 <= self.gold < len(self.choices):
            raise ScratchLMError(f"{where}: answer index {self.gold} is out of range for {len(self.choices)} choices")
        return self


def stderr_of_mean(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def score_choices(loglikelihoods: list[float], choices: list[str], gold: int, delimiter: str = "") -> dict:
    """acc and acc_norm (per byte of each choice without its leading `delimiter`) of one example."""
    best = max(range(len(choices)), key=lambda i: loglikelihoods[i])
    texts = [c[len(delimiter) :] if delimiter and c.startswith(delimiter) else c for c in choices]
    per_byte = [ll / max(1, len(c.encode("utf-8"))) for ll, c in zip(loglikelihoods, texts)]
    best_norm = max(range(len(choices)), key=lambda i: per_byte[i])
    return {"acc": float(best == gold), "acc_norm": float(best_norm == gold), "pred": best}


def evaluate_mc(scorer, examples: list[MCExample], progress=None) -> tuple[dict, list[dict]]:
    """Score every choice of every example; returns (metrics, per-example records)."""
    pairs = [(ex.context, choice) for ex in examples for choice in ex.choices]
    results = scorer.loglikelihood(pairs, progress)
    records, i = [], 0
    for ex in examples:
        lls = results[i : i + len(ex.choices)]
        i += len(ex.choices)
        s = score_choices([ll for ll, _ in lls], ex.choices, ex.gold, ex.target_delimiter)
        records.append(
            {
                "group": ex.group,
                "gold": ex.gold,
                "pred": s["pred"],
                "acc": s["acc"],
                "acc_norm": s["acc_norm"],
                "loglikelihoods": [ll for ll, _ in lls],
                "is_greedy": [g for _, g in lls],
                **ex.meta,
            }
        )
    return summarise(records), records


def summarise(records: list[dict]) -> dict:
    out = {"n": len(records)}
    for m in ("acc", "acc_norm"):
        vals = [r[m] for r in records]
        out[m] = sum(vals) / len(vals) if vals else float("nan")
        out[f"{m}_stderr"] = stderr_of_mean(vals)
    groups = sorted({r["group"] for r in records if r["group"]})
    if groups:
        per = {g: [r for r in records if r["group"] == g] for g in groups}
        out["groups"] = {
            g: {m: sum(r[m] for r in v) / len(v) for m in ("acc", "acc_norm")} | {"n": len(v)} for g, v in per.items()
        }
        out["acc_macro"] = sum(g["acc"] for g in out["groups"].values()) / len(groups)
    return out


# ---------------------------------------------------------------------- user JSONL tasks
def read_jsonl(path: str | Path, what: str = "task file") -> list[dict]:
    path = check_input_file(path, what)
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ScratchLMError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ScratchLMError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise ScratchLMError(f"{path}: no examples")
    return rows


def mc_from_row(row: dict, where: str, target_delimiter: str = " ") -> MCExample:
    for key in ("choices", "answer"):
        if key not in row:
            raise ScratchLMError(f"{where}: missing field {key!r}")
    if "question" not in row and "context" not in row:
        raise ScratchLMError(f"{where}: missing field 'question' (or 'context')")
    choices = row["choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise ScratchLMError(f"{where}: 'choices' must be a list of strings")
    answer = row["answer"]
    if isinstance(answer, str) and not answer.lstrip("-").isdigit():
        if answer not in choices:
            raise ScratchLMError(f"{where}: answer {answer!r} is not one of the choices")
        answer = choices.index(answer)
    context = row["context"] if "context" in row else f"Question: {row['question']}\nAnswer:"
    ex = MCExample(context, [target_delimiter + c for c in choices], int(answer), row.get("group", ""))
    ex.target_delimiter = target_delimiter
    return ex.check(where)


def jsonl_mc_task(
    path: str | Path, limit: int | None = None, num_fewshot: int = 0, seed: int = 1234
) -> list[MCExample]:
    """A user's multiple-choice JSONL as examples; few-shot examples drawn (seeded) from the other rows."""
    rows = read_jsonl(path)
    examples = [mc_from_row(r, f"{path}:{i + 1}") for i, r in enumerate(rows)]
    chosen = examples[:limit] if limit else examples
    if num_fewshot:
        rng = random.Random(seed)
        for k, ex in enumerate(chosen):
            pool = [e for j, e in enumerate(examples) if j != k]
            shots = rng.sample(pool, min(num_fewshot, len(pool)))
            prefix = "".join(s.context + s.choices[s.gold] + "\n\n" for s in shots)
            ex.context = prefix + ex.context
    return chosen
