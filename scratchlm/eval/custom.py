"""Custom tasks from a TOML description over a JSONL file: users add tasks without writing code.

    # capitals.toml                                  scratchlm eval run --model M --tasks task:capitals.toml
    kind = "multiple_choice"                         # or "generate"
    data = "capitals.jsonl"                          # one JSON object a line; relative to this file
    prompt = "Q: What is the capital of {country}?\\nA:"
    choices = "options"                              # multiple choice: a field holding the list, or a list
    answer = "answer"                                # the gold: an index or a choice's text (mc); the text (gen)
    num_fewshot = 2

Fields (`TaskSpec`; an unknown key is an error naming the nearest valid one):

    name              results key (default: the file's stem)
    kind              "multiple_choice" (log-likelihood of each choice) | "generate" (greedy text)
    data              the examples; fewshot_data: where shots come from (default: the other rows of `data`)
    prompt            a Python format string over a row's fields: "{question}", "{choices[0]}"
    choices, answer   see above; `choice_template` renders each choice ("{choice}" by default)
    target_delimiter  between the prompt and a choice / a shot's answer (default " ")
    fewshot_delimiter between rendered shots and the question (default "\\n\\n")
    num_fewshot       shots per question, drawn with `seed` (the same shots for a row on every run)
    metric            mc: "acc" (headline; acc_norm per byte is reported too) | "acc_norm";
                      generate: "exact_match" (stripped strings equal) | "contains" (gold within the
                      output) | "number" (the last number of the output equals the gold number)
    stop, max_tokens  generate: stop strings (not emitted), the most new tokens
    chat              generate: send the prompt (shots as earlier turns) through the model's chat template

A shot is rendered as prompt + target_delimiter + gold text, exactly like the question it precedes, so a
task file and its few-shot examples read the same way lm-evaluation-harness's YAML tasks do.
"""

from __future__ import annotations

import difflib
import random
import string
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.eval.tasks import MCExample, read_jsonl, stderr_of_mean

KINDS = ("multiple_choice", "generate")
METRICS = {"multiple_choice": ("acc", "acc_norm"), "generate": ("exact_match", "contains", "number")}


@dataclass
class TaskSpec:
    data: str  # JSONL of examples (relative paths are relative to the TOML file)
    prompt: str  # format string over the row's fields
    answer: str  # field of the gold answer
    kind: str = "multiple_choice"  # multiple_choice | generate
    name: str = ""  # results key; default the TOML file's stem
    choices: str | list[str] = "choices"  # mc: the field holding the choices, or the choices themselves
    choice_template: str = "{choice}"  # mc: how a choice is written ({choice} and the row's fields)
    target_delimiter: str = " "  # between prompt and answer
    fewshot_delimiter: str = "\n\n"  # between rendered shots and the question
    num_fewshot: int = 0  # shots per question
    fewshot_data: str = ""  # JSONL the shots come from; "" = the other rows of `data`
    seed: int = 1234  # shot sampling
    metric: str = ""  # default: acc (mc), exact_match (generate)
    stop: list[str] = field(default_factory=lambda: ["\n\n"])  # generate: stop strings
    max_tokens: int = 64  # generate: most new tokens
    chat: bool = False  # generate: through the model's chat template
    root: Path = field(default=Path("."), repr=False)  # the TOML's folder (not a TOML key)

    def validate(self, where: str) -> TaskSpec:
        if self.kind not in KINDS:
            raise ScratchLMError(f"{where}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        self.metric = self.metric or METRICS[self.kind][0]
        if self.metric not in METRICS[self.kind]:
            raise ScratchLMError(
                f"{where}: metric {self.metric!r} is not one of {', '.join(METRICS[self.kind])} (kind {self.kind})"
            )
        if self.num_fewshot < 0 or self.max_tokens < 1:
            raise ScratchLMError(f"{where}: num_fewshot must be >= 0 and max_tokens >= 1")
        if isinstance(self.choices, list) and len(self.choices) < 2:
            raise ScratchLMError(f"{where}: a choice list needs at least 2 choices, got {len(self.choices)}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not s for s in self.stop):
            raise ScratchLMError(f"{where}: stop strings must not be empty")
        for what in ("prompt", "choice_template"):
            try:
                list(string.Formatter().parse(getattr(self, what)))
            except ValueError as e:
                raise ScratchLMError(f"{where}: {what} is not a valid format string ({e})") from None
        return self

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p


def load_spec(path: str | Path) -> TaskSpec:
    path = Path(path)
    if not path.is_file():
        raise ScratchLMError(f"task file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ScratchLMError(f"{path}: not valid TOML ({e})") from None
    raw = raw.get("task", raw)  # a [task] table or top-level keys
    names = [f.name for f in fields(TaskSpec) if f.name != "root"]
    for key in raw:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            raise ScratchLMError(f"{path}: unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    for key in ("data", "prompt", "answer"):
        if key not in raw:
            raise ScratchLMError(f"{path}: missing key {key!r}")
    spec = TaskSpec(**raw, root=path.parent)
    spec.name = spec.name or path.stem
    return spec.validate(str(path))


# ---------------------------------------------------------------------------------------- rendering
def render(template: str, row: dict, where: str, **extra) -> str:
    try:
        return template.format(**row, **extra)
    except KeyError as e:
        raise ScratchLMError(f"{where}: the template names field {e.args[0]!r}, which the row lacks") from None
    except (IndexError, AttributeError, ValueError) as e:
        raise ScratchLMError(f"{where}: cannot fill the template ({type(e).__name__}: {e})") from None


def row_choices(spec: TaskSpec, row: dict, where: str) -> list[str]:
    raw = spec.choices if isinstance(spec.choices, list) else row.get(spec.choices)
    if raw is None:
        raise ScratchLMError(f"{where}: missing field {spec.choices!r} (the choices)")
    if not isinstance(raw, list) or len(raw) < 2:
        raise ScratchLMError(f"{where}: the choices must be a list of at least 2, got {raw!r}")
    return [render(spec.choice_template, row, where, choice=c) for c in raw]


def gold_index(spec: TaskSpec, row: dict, choices: list[str], where: str) -> int:
    if spec.answer not in row:
        raise ScratchLMError(f"{where}: missing field {spec.answer!r} (the answer)")
    gold = row[spec.answer]
    if isinstance(gold, bool) or not isinstance(gold, int | str):
        raise ScratchLMError(f"{where}: the answer must be an index or a choice's text, got {gold!r}")
    if isinstance(gold, str):
        if gold in choices:
            return choices.index(gold)
        if not gold.strip().lstrip("-").isdigit():
            raise ScratchLMError(f"{where}: answer {gold!r} is not one of the choices")
        gold = int(gold)
    if not 0 <= gold < len(choices):
        raise ScratchLMError(f"{where}: answer index {gold} is out of range for {len(choices)} choices")
    return gold


def gold_text(spec: TaskSpec, row: dict, where: str) -> str:
    if spec.kind == "multiple_choice":
        choices = row_choices(spec, row, where)
        return choices[gold_index(spec, row, choices, where)]
    if spec.answer not in row:
        raise ScratchLMError(f"{where}: missing field {spec.answer!r} (the answer)")
    return str(row[spec.answer])


@dataclass
class Item:
    """One question: its few-shot prefix (text, or chat turns), the question text, the gold."""

    shots: list[tuple[str, str]]  # (prompt, answer) of each shot
    question: str
    gold: str | int
    choices: list[str] = field(default_factory=list)
    row: int = 0


def items(spec: TaskSpec, limit: int | None = None) -> list[Item]:
    data = spec.path(spec.data)
    rows = read_jsonl(data, f"task {spec.name} data")
    pool_file = spec.path(spec.fewshot_data) if spec.fewshot_data else None
    pool = read_jsonl(pool_file, f"task {spec.name} few-shot data") if pool_file else rows
    pool_where = str(pool_file or data)
    if spec.num_fewshot > len(pool) - (0 if pool_file else 1):
        raise ScratchLMError(f"{spec.name}: {spec.num_fewshot}-shot asked but {pool_where} has too few rows")
    rng = random.Random(spec.seed)
    out = []
    for i, row in enumerate(rows[:limit] if limit else rows):
        where = f"{data}:{i + 1}"
        candidates = [j for j in range(len(pool)) if pool_file or j != i]
        shot_rows = [pool[j] for j in rng.sample(candidates, spec.num_fewshot)] if spec.num_fewshot else []
        shots = [
            (render(spec.prompt, r, f"{pool_where} (shot)"), gold_text(spec, r, f"{pool_where} (shot)"))
            for r in shot_rows
        ]
        question = render(spec.prompt, row, where)
        if spec.kind == "multiple_choice":
            choices = row_choices(spec, row, where)
            out.append(Item(shots, question, gold_index(spec, row, choices, where), choices, i))
        else:
            out.append(Item(shots, question, gold_text(spec, row, where), row=i))
    return out


def text_prompt(spec: TaskSpec, item: Item) -> str:
    parts = [p + spec.target_delimiter + a for p, a in item.shots] + [item.question]
    return spec.fewshot_delimiter.join(parts)


def mc_examples(spec: TaskSpec, limit: int | None = None) -> list[MCExample]:
    d = spec.target_delimiter
    return [
        MCExample(text_prompt(spec, it), [d + c for c in it.choices], it.gold, "", {"id": it.row}, d)
        for it in items(spec, limit)
    ]


# ---------------------------------------------------------------------------------------- generation
def _number(text: str) -> str | None:
    from scratchlm.eval.gsm8k import extract_last

    return extract_last(text)


def gen_score(metric: str, output: str, gold: str) -> float:
    if metric == "exact_match":
        return float(output.strip() == gold.strip())
    if metric == "contains":
        return float(gold.strip() in output)
    want = _number(gold)
    return float(want is not None and _number(output) == want)


def generate(llm, chat, spec: TaskSpec, its: list[Item]) -> list[dict]:
    """Greedy generation through the inference engine for `its`; returns per-example records."""
    from scratchlm.infer.sampling import SamplingParams

    prompts = []
    for it in its:
        if spec.chat:
            msgs = []
            for p, a in it.shots:
                msgs += [{"role": "user", "content": p}, {"role": "assistant", "content": a}]
            prompts.append(chat.apply_chat_template([*msgs, {"role": "user", "content": it.question}]))
        else:
            prompts.append(text_prompt(spec, it))
    params = SamplingParams(temperature=0, max_tokens=spec.max_tokens, stop=spec.stop)
    records = []
    for it, out in zip(its, llm.generate(prompts, params) if prompts else []):
        text = out.outputs[0].text
        records.append(
            {"id": it.row, "target": it.gold, "output": text, spec.metric: gen_score(spec.metric, text, it.gold)}
        )
    return records


def summarise(records: list[dict], metric: str) -> dict:
    vals = [r[metric] for r in records]
    return {
        "n": len(records),
        metric: sum(vals) / len(vals) if vals else float("nan"),
        f"{metric}_stderr": stderr_of_mean(vals),
        "metric": metric,
    }


def evaluate(spec: TaskSpec, model, chat, scorer=None, llm=None, limit: int | None = None) -> tuple[dict, list[dict]]:
    """Run a custom task: multiple choice through a `loglik.Scorer`, generation through the engine."""
    if spec.kind == "multiple_choice":
        from scratchlm.eval.loglik import Scorer
        from scratchlm.eval.tasks import evaluate_mc

        metrics, records = evaluate_mc(scorer or Scorer(model, chat), mc_examples(spec, limit))
        metrics["metric"] = spec.metric
        return metrics, records
    if llm is None:
        from scratchlm.infer.engine import LLM

        llm = LLM(model, chat)
    records = generate(llm, chat, spec, items(spec, limit))
    return summarise(records, spec.metric), records
