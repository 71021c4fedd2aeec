"""GSM8K (Cobbe et al. 2021): grade-school math word problems, scored by exact match of the final number.

Prompt (lm-evaluation-harness's `gsm8k` task): k solved training problems, each

    Question: <question>
    Answer: <worked solution ending in "#### N">

joined by a blank line, then "Question: <test question>\\nAnswer:". The few-shot examples are drawn
from the train split with a fixed seed (`seed`), the same ones for every question. With `chat=True`
(instruct models) the shots become alternating user/assistant turns of the model's chat template
(lm-eval's `--apply_chat_template --fewshot_as_multiturn`).

Generation is greedy through the inference engine (`scratchlm.infer.engine.LLM`), at most `max_tokens`
new tokens, stopped at "Question:", "</s>", "<|im_end|>" (`STOPS`, lm-eval's) or the model's end token.

Scoring, two extractions of the predicted number (as lm-eval's `strict-match` and `flexible-extract`):
- `exact_match_strict`: the number after "#### " (a model that did not learn the format scores 0);
- `exact_match`: the last number in the output (the headline figure; most small models never write "####").
Both compare numbers after removing "$", "," and a trailing "." (so "1,000.", "$1000" and "1000" match);
gold is the number after "####" in the reference answer. `pass@k` (k samples at temperature > 0) is
the unbiased estimator of Chen et al. 2021: 1 - C(n - c, k) / C(n, k) over n samples with c correct.
"""

from __future__ import annotations

import logging
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.eval.tasks import read_jsonl, stderr_of_mean

log = logging.getLogger(__name__)

STOPS = ["Question:", "</s>", "<|im_end|>"]  # lm-eval gsm8k's `until`
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
NUMBER = re.compile(r"-?[$0-9.,]*[0-9]")


@dataclass
class GenExample:
    prompt: str | list[dict]  # text, or chat messages
    target: str
    meta: dict = field(default_factory=dict)


def normalise(number: str | None) -> str | None:
    if number is None:
        return None
    s = number.replace("$", "").replace(",", "").rstrip(".")
    try:
        value = float(s)
    except ValueError:
        return s
    return str(int(value)) if value == int(value) else str(value)


def gold_answer(answer: str) -> str:
    if "####" not in answer:
        raise ScratchLMError(f"a GSM8K answer without '#### N': {answer[:60]!r}...")
    return normalise(answer.split("####")[-1].strip())


def extract_strict(text: str) -> str | None:
    m = STRICT.search(text)
    return normalise(m.group(1)) if m else None


def extract_last(text: str) -> str | None:
    found = NUMBER.findall(text)
    return normalise(found[-1]) if found else None


def load(
    test_file: str | Path,
    train_file: str | Path,
    num_fewshot: int = 5,
    limit: int | None = None,
    seed: int = 1234,
    chat: bool = False,
) -> list[GenExample]:
    rows = read_jsonl(test_file, "GSM8K test file")
    for i, r in enumerate(rows):
        for key in ("question", "answer"):
            if key not in r:
                raise ScratchLMError(f"{test_file}:{i + 1}: missing field {key!r}")
    shots = random.Random(seed).sample(read_jsonl(train_file, "GSM8K train file"), num_fewshot) if num_fewshot else []
    examples = []
    for i, r in enumerate(rows[:limit] if limit else rows):
        if chat:
            msgs = []
            for s in shots:
                msgs += [
                    {"role": "user", "content": f"Question: {s['question']}\nAnswer:"},
                    {"role": "assistant", "content": s["answer"]},
                ]
            msgs.append({"role": "user", "content": f"Question: {r['question']}\nAnswer:"})
            prompt = msgs
        else:
            prompt = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
            prompt += f"Question: {r['question']}\nAnswer:"
        examples.append(GenExample(prompt, gold_answer(r["answer"]), {"id": i}))
    return examples


def pass_at_k(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate(
    llm,
    chat,
    examples: list[GenExample],
    max_tokens: int = 256,
    samples: int = 1,
    temperature: float = 0.0,
    seed: int = 1234,
    k: int = 1,
    truncate: str = "left",
) -> tuple[dict, list[dict]]:
    """Generate for every example (through the engine) and score; returns (metrics, per-example records).
    A prompt that leaves fewer than `max_tokens` positions in the model's context is cut from the left
    (`truncate="left"`, with a warning) or refused (`truncate="error"`)."""
    from scratchlm.infer.sampling import SamplingParams

    if samples > 1 and temperature <= 0:
        raise ScratchLMError("pass@k with several samples needs temperature > 0")
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens, stop=STOPS, n=samples, seed=seed)
    room = llm.engine.model.config.context_length - max_tokens
    if room < 1:
        raise ScratchLMError(f"max_tokens {max_tokens} leaves no room for a prompt in a context of {room + max_tokens}")
    prompts = []
    for ex in examples:
        text = chat.apply_chat_template(ex.prompt) if isinstance(ex.prompt, list) else ex.prompt
        ids = chat.encode(text, add_special=not isinstance(ex.prompt, list))
        if len(ids) > room:
            if truncate == "error":
                raise ScratchLMError(
                    f"a GSM8K prompt of {len(ids)} tokens leaves no room for {max_tokens} new "
                    f"tokens in the model's context; use fewer shots or truncate='left'"
                )
            log.warning("a prompt of %d tokens is cut from the left to %d", len(ids), room)
            ids = ids[-room:]
        prompts.append(ids)
    outputs = llm.generate(prompts, params)
    records = []
    for ex, out in zip(examples, outputs):
        texts = [o.text for o in out.outputs]
        last = [extract_last(t) == ex.target for t in texts]
        strict = [extract_strict(t) == ex.target for t in texts]
        rec = {
            "target": ex.target,
            "output": texts[0],
            "pred": extract_last(texts[0]),
            "exact_match": float(last[0]),
            "exact_match_strict": float(strict[0]),
            **ex.meta,
        }
        if samples > 1:
            rec[f"pass@{k}"] = pass_at_k(len(texts), sum(last), k)
        records.append(rec)
    return summarise(records, samples, k), records


def summarise(records: list[dict], samples: int = 1, k: int = 1) -> dict:
    out = {"n": len(records)}
    metrics = ["exact_match", "exact_match_strict"] + ([f"pass@{k}"] if samples > 1 else [])
    for m in metrics:
        vals = [r[m] for r in records]
        out[m] = sum(vals) / len(vals) if vals else float("nan")
        out[f"{m}_stderr"] = stderr_of_mean(vals)
    return out
