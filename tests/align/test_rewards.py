"""Answer parsers and verifiers."""

import pytest

from scratchlm.align.rewards import (
    format_reward,
    gsm8k_answer,
    gsm8k_reward,
    math_equal,
    mmlu_letter,
    mmlu_reward,
    r1_reward,
    reward_function,
)
from scratchlm.errors import ScratchLMError


@pytest.mark.parametrize(
    "text, want",
    [
        ("She pays 5 + 13 = 18 dollars.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("The total is $1,250.50.", "1250.50"),
        ("first 3, then -7", "-7"),
        ("no number here", None),
        ("#### $42\nextra 7", "42"),
    ],
)
def test_gsm8k_answer(text, want):
    assert gsm8k_answer(text) == want


def test_gsm8k_reward_compares_numbers():
    assert gsm8k_reward("so the answer is 18.", "Janet ... \n#### 18")["reward"] == 1.0
    assert gsm8k_reward("18.00", "18")["reward"] == 1.0
    assert gsm8k_reward("1,000", "1000")["reward"] == 1.0
    assert gsm8k_reward("19", "18")["reward"] == 0.0
    assert gsm8k_reward("", "18")["reward"] == 0.0


@pytest.mark.parametrize(
    "text, want",
    [("The answer is (C).", "C"), ("B. Paris", "B"), ("I think (D) fits", "D"), ("Answer: a", "A"), ("none", None)],
)
def test_mmlu_letter(text, want):
    assert mmlu_letter(text) == want


def test_mmlu_reward():
    assert mmlu_reward("The answer is B", "B")["reward"] == 1.0
    assert mmlu_reward("The answer is B", "C")["reward"] == 0.0


def test_r1_and_format_rewards():
    good = "<think>2 + 2 = 4</think> <answer>4</answer>"
    assert r1_reward(good, "4") == {"format_reward": 1.0, "answer_reward": 1.0, "reward": 1.0}
    assert r1_reward(good, "5")["reward"] == 0.0 and r1_reward(good, "5")["format_reward"] == 1.0
    assert r1_reward("<answer>4</answer>", "4") == {"format_reward": 0.0, "answer_reward": 1.0, "reward": 0.0}
    assert format_reward("text <think>a</think><answer>b</answer>")["reward"] == 0.0


def test_math_equal_numbers_and_latex():
    assert math_equal("0.5", "1/2")
    assert not math_equal("0.5", "2")
    pytest.importorskip("math_verify", reason="math-verify (PyPI) compares LaTeX")
    assert math_equal("\\frac{1}{2}", "0.5")
    assert math_equal("$\\sqrt{4}$", "2")
    assert not math_equal("\\frac{1}{3}", "0.5")


def test_reward_function_lookup():
    assert reward_function("gsm8k") is gsm8k_reward
    assert reward_function("scratchlm.align.rewards:mmlu_reward") is mmlu_reward
    with pytest.raises(ScratchLMError, match="unknown reward"):
        reward_function("nope")
    with pytest.raises(ScratchLMError, match="not found"):
        reward_function("scratchlm.align.rewards:nope")
