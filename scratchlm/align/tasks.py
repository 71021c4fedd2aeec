"""Verifiable tasks generated procedurally (offline, seeded): prompts with a ground-truth answer, for GRPO,
expert iteration and SFT on a model small enough to train on a CPU.

    rows = arithmetic_task(n=1000, seed=0, ops="+", digits=2)   # [{"prompt": "37+45=", "answer": "82"}, ...]
    write_task_jsonl(rows, "train.jsonl")                      # the prompts file `scratchlm align grpo` reads
    sft_rows(rows)                                              # [{"prompt", "response"}] worked solutions

The prompt is the bare expression (a base model without a chat template continues it); `answer` is what
`rewards.gsm8k_reward` compares the response's final number with.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from scratchlm.errors import ScratchLMError

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic_task(
    n: int, seed: int = 0, ops: str = "+", digits: int = 2, template: str = "{a}{op}{b}="
) -> list[dict]:
    """n problems "a op b" with operands of 1..`digits` digits, ops drawn from `ops` (any of "+-*")."""
    bad = set(ops) - set(_OPS)
    if bad or not ops:
        raise ScratchLMError(f"ops must be made of {''.join(_OPS)}, got {ops!r}")
    if digits < 1:
        raise ScratchLMError(f"digits must be >= 1, got {digits}")
    rng = random.Random(seed)
    hi = 10**digits - 1
    rows = []
    for _ in range(n):
        a, b, op = rng.randint(0, hi), rng.randint(0, hi), rng.choice(ops)
        rows.append({"prompt": template.format(a=a, op=op, b=b), "answer": str(_OPS[op](a, b))})
    return rows


def sft_rows(rows: list[dict]) -> list[dict]:
    """The task's solutions as SFT pairs: the response is the answer itself."""
    return [{"prompt": r["prompt"], "response": r["answer"]} for r in rows]


def write_task_jsonl(rows: list[dict], path: str | Path) -> Path:
    from scratchlm.io import atomic_write

    path = Path(path)
    with atomic_write(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path
