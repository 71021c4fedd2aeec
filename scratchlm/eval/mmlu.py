"""MMLU (Hendrycks et al. 2021): 57 subjects, four-way multiple choice, k-shot from the dev split.

The prompt is lm-evaluation-harness's `mmlu` task (the "MCF" letter format), so figures compare:

    The following are multiple choice questions (with answers) about abstract algebra.

    <dev question 1>
    A. ...
    B. ...
    C. ...
    D. ...
    Answer: B

    ... (k dev examples, the first k in file order, separated by a blank line) ...

    <test question>
    A. ...
    ...
    Answer:

The choices scored are " A", " B", " C", " D" (one token each for byte-level BPEs), so `acc` is the
figure; `acc_norm` equals it up to ties.

`fmt="cloze"` is the formulation small models are reported with (SmolLM2's model card, lighteval's
`mmlu_cloze`, 0-shot by default): no letters, each answer *text* scored as the continuation and the
choice with the highest log-likelihood per byte wins (`acc_norm` is the figure):

    The following are questions about abstract algebra.
    Question: <question>
    Answer: <choice text>

Few-shot cloze prompts put k dev examples, each "Question: ...\nAnswer: <gold text>\n\n", after the
first line. Questions are `.strip()`ped as lm-eval does. The overall
score is the mean over all questions (micro, what lm-eval's `mmlu` group reports); the mean over
subjects (macro, the original paper's) is reported next to it.

Data: `DIR/dev/<subject>_dev.csv` and `DIR/<split>/<subject>_<split>.csv`, rows of
question, A, B, C, D, answer letter (the original release's layout).
"""

from __future__ import annotations

import csv
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.eval.tasks import MCExample

LETTERS = ["A", "B", "C", "D"]


def subjects(data_dir: str | Path, split: str = "val") -> list[str]:
    d = Path(data_dir) / split
    if not d.is_dir():
        raise ScratchLMError(f"MMLU split folder not found: {d}")
    names = sorted(p.name[: -len(f"_{split}.csv")] for p in d.glob(f"*_{split}.csv"))
    if not names:
        raise ScratchLMError(f"no MMLU files (*_{split}.csv) in {d}")
    return names


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise ScratchLMError(f"MMLU file not found: {path}")
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if len(row) != 6 or row[5].strip() not in LETTERS:
                raise ScratchLMError(f"{path}:{n}: expected question, A, B, C, D, answer letter; got {len(row)} fields")
            rows.append({"question": row[0], "choices": row[1:5], "answer": LETTERS.index(row[5].strip())})
    return rows


def format_question(row: dict) -> str:
    lines = [row["question"].strip(), *(f"{letter}. {c}" for letter, c in zip(LETTERS, row["choices"]))]
    return "\n".join(lines) + "\nAnswer:"


def prompt(subject: str, shots: list[dict], row: dict) -> str:
    head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    fewshot = "".join(format_question(s) + " " + LETTERS[s["answer"]] + "\n\n" for s in shots)
    return head + fewshot + format_question(row)


def cloze_question(row: dict) -> str:
    return f"Question: {row['question'].strip()}\nAnswer:"


def cloze_prompt(subject: str, shots: list[dict], row: dict) -> str:
    head = f"The following are questions about {subject.replace('_', ' ')}.\n"
    fewshot = "".join(f"{cloze_question(s)} {s['choices'][s['answer']]}\n\n" for s in shots)
    return head + fewshot + cloze_question(row)


FORMATS = ("mc", "cloze")


def load(
    data_dir: str | Path,
    split: str = "val",
    num_fewshot: int = 5,
    limit: int | None = None,
    only: list[str] | None = None,
    fmt: str = "mc",
) -> list[MCExample]:
    """MMLU examples: `limit` questions per subject (the first ones), `only` a subset of subjects, in the
    letter ("mc") or answer-text ("cloze") formulation."""
    if fmt not in FORMATS:
        raise ScratchLMError(f"unknown MMLU format {fmt!r}: expected one of {', '.join(FORMATS)}")
    data_dir = Path(data_dir)
    names = subjects(data_dir, split)
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ScratchLMError(f"unknown MMLU subject(s): {', '.join(unknown)}")
        names = [n for n in names if n in only]
    examples = []
    for subject in names:
        shots = read_csv(data_dir / "dev" / f"{subject}_dev.csv")[:num_fewshot] if num_fewshot else []
        if len(shots) < num_fewshot:
            raise ScratchLMError(f"{subject}: {num_fewshot}-shot asked but the dev split has {len(shots)} examples")
        rows = read_csv(data_dir / split / f"{subject}_{split}.csv")
        for i, row in enumerate(rows[:limit] if limit else rows):
            if fmt == "cloze":
                context, choices = cloze_prompt(subject, shots, row), [" " + c.strip() for c in row["choices"]]
            else:
                context, choices = prompt(subject, shots, row), [" " + x for x in LETTERS]
            examples.append(MCExample(context, choices, row["answer"], subject, {"id": i}))
    return examples
