"""Answer parsers and verifiers: the rewards of learning from verifiable tasks (GSM8K, MMLU-style, math).

    gsm8k_answer("... so she has 18 dollars.\\n#### 18")            # "18"
    mmlu_letter("The answer is (C) because ...")                     # "C"
    r1_reward("<think>2+2</think> <answer>4</answer>", "4")          # {"reward": 1.0, "format_reward": 1.0, ...}
    fn = reward_function("gsm8k")  or  reward_function("my_pkg.rewards:score")

Every reward function takes (response, ground_truth) and returns {"reward", ...} (floats in [0, 1]).
Numbers are compared as numbers (commas, "$", trailing "." and "1.50" vs "1.5" do not matter); LaTeX math
goes through `math-verify` (PyPI) when it is installed.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from fractions import Fraction

from scratchlm.errors import ScratchLMError

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FORMAT = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)
_LETTER_PATTERNS = [
    re.compile(r"answer\s*(?:is|:)?\s*\(?([A-D])\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-D])\)?(?:[.):\s]|$)"),
    re.compile(r"\(([A-D])\)"),
]


def normalize_number(text: str) -> Fraction | None:
    """The value of a number written like "1,234", "$5", "-3.50", "7." (exact), or None."""
    t = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return found[-1].replace("$", "").replace(",", "") if found else None


def gsm8k_answer(text: str) -> str | None:
    """The final answer of a GSM8K-style solution: after "####" when present, else the last number."""
    m = _HASHES.search(text)
    if m:
        n = last_number(m.group(1).split("\n")[0]) if _NUMBER.search(m.group(1)) else None
        if n is not None:
            return n
    return last_number(text)


def mmlu_letter(text: str) -> str | None:
    """The letter A-D a multiple-choice answer picks ("The answer is (B)", "C. ...", "(D)"), or None."""
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1).upper()
    return None


def numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    x, y = normalize_number(a), normalize_number(b)
    return x is not None and x == y


def gsm8k_reward(response: str, ground_truth: str) -> dict:
    """1 when the response's final number equals the ground truth's (a number, or a full "#### N" solution)."""
    truth = gsm8k_answer(ground_truth) or ground_truth
    ok = numbers_equal(gsm8k_answer(response), truth)
    return {"reward": float(ok), "answer_reward": float(ok)}


def mmlu_reward(response: str, ground_truth: str) -> dict:
    ok = mmlu_letter(response) == ground_truth.strip().upper()
    return {"reward": float(ok), "answer_reward": float(ok)}


def math_equal(answer: str, truth: str) -> bool:
    """Numbers compared as numbers; otherwise `math-verify` (LaTeX / symbolic equivalence) when installed,
    else exact string match after stripping spaces and $ signs."""
    if numbers_equal(answer, truth):
        return True
    try:
        from math_verify import parse, verify
    except ImportError:
        return answer.replace(" ", "").strip("$") == truth.replace(" ", "").strip("$")
    try:
        gold = parse(truth if "$" in truth or "\\" in truth else f"${truth}$")
        pred = parse(answer if "$" in answer or "\\" in answer else f"${answer}$")
        return bool(verify(gold, pred))
    except Exception:  # noqa: BLE001 - math-verify's parser may fail on junk: not equal
        return False


def r1_reward(response: str, ground_truth: str) -> dict:
    """DeepSeek-R1-style reward: format "<think>...</think> <answer>...</answer>" and the answer inside the
    tags equal to the ground truth. reward = 1 only when both hold."""
    formatted = bool(_FORMAT.match(response))
    m = _ANSWER_TAG.search(response)
    correct = bool(m) and math_equal(m.group(1).strip(), ground_truth.strip())
    return {"format_reward": float(formatted), "answer_reward": float(correct), "reward": float(formatted and correct)}


def format_reward(response: str, ground_truth: str = "") -> dict:
    ok = bool(_FORMAT.match(response))
    return {"reward": float(ok), "format_reward": float(ok)}


REWARDS: dict[str, Callable[[str, str], dict]] = {
    "gsm8k": gsm8k_reward,
    "mmlu": mmlu_reward,
    "r1": r1_reward,
    "format": format_reward,
    "math": lambda response, truth: {"reward": float(math_equal(gsm8k_answer(response) or response, truth))},
}


def reward_function(spec: str) -> Callable[[str, str], dict]:
    """A reward function by name (REWARDS) or as "package.module:function" (a user's own, imported)."""
    if spec in REWARDS:
        return REWARDS[spec]
    if ":" not in spec:
        raise ScratchLMError(f"unknown reward {spec!r}: expected one of {', '.join(REWARDS)} or 'module:function'")
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ScratchLMError(f"reward function {spec!r} not found: {e}") from e
    if not callable(fn):
        raise ScratchLMError(f"reward {spec!r} is not callable")
    return fn
