from __future__ import annotations

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.tokenizer.pretokenize import GPT2_PATTERN, last_safe_cut, special_splitter, split_special, stream_cut

PAT = regex.compile(GPT2_PATTERN)

# Text drawn from characters that exercise every branch of the regex.
alphabet = st.sampled_from(list("ab Z9 \t\n\r'’.,!-é中\u00a0\u2028") + ["'s", "'ll", "  ", "\n\n"])
texts = st.lists(alphabet, max_size=60).map("".join)


@settings(max_examples=400, deadline=None)
@given(texts)
def test_every_safe_cut_preserves_pretokens(text):
    # Check every candidate position, not only the last one.
    for p in range(1, len(text)):
        if last_safe_cut(text, p + 1) == p:
            assert PAT.findall(text[:p]) + PAT.findall(text[p:]) == PAT.findall(text), (text, p)


def test_safe_cut_examples():
    assert last_safe_cut("hello world") == 5
    assert last_safe_cut("hello  ") == 0  # no space followed by non-space
    assert last_safe_cut("a b c", 3) == 1  # bounded search


def test_split_special_longest_wins():
    splitter = special_splitter(["<|a|>", "<|a|><|a|>"])
    assert list(split_special("x<|a|><|a|>y<|a|>", splitter)) == [
        ("x", False),
        ("<|a|><|a|>", True),
        ("y", False),
        ("<|a|>", True),
    ]


def test_stream_cut_never_cuts_a_special_token_that_may_be_arriving():
    splitter = special_splitter(["<|end of text|>"])
    text = "some words <|end of"  # a special token is arriving: only cut before it
    cut = stream_cut(text, splitter, len("<|end of text|>"))
    assert cut <= text.index("<|")
    full = "one two <|end of text|> three four five six seven eight nine ten eleven twelve"
    cut = stream_cut(full, splitter, len("<|end of text|>"))
    assert not (full.index("<|") < cut < full.index("|>") + 2)
