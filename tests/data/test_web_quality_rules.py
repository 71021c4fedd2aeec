"""Gopher quality rules (CS336 assignment 4 cases), C4 line filters, Gopher repetition filters."""

from __future__ import annotations

from web_helpers import ENGLISH, paragraph

from scratchlm.data import c4_line_filter, gopher_quality_failures, gopher_quality_filter, repetition_failures
from scratchlm.data.quality_rules import C4Rules, GopherRules, RepetitionRules

# ---------------------------------------------------------------------------------------------- Gopher quality


def test_gopher_keeps_ordinary_prose():
    assert gopher_quality_filter(ENGLISH * 3)
    assert gopher_quality_failures(ENGLISH * 3) == []


def test_gopher_too_few_and_too_many_words():
    assert not gopher_quality_filter("The string you are reading is a short snippet of text.")
    assert gopher_quality_failures("word " * 49) == ["gopher_too_few_words"]
    assert gopher_quality_filter("word " * 50)
    assert gopher_quality_failures("word " * 100_001) == ["gopher_too_many_words"]


def test_gopher_mean_word_length():
    assert gopher_quality_failures("a be to " * 40) == ["gopher_mean_word_length"]  # mean 5/3
    assert gopher_quality_failures("supercalifragilisticexpialidocious " * 60) == ["gopher_mean_word_length"]
    assert gopher_quality_filter("abc " * 60) and gopher_quality_filter("abcdefghij " * 60)  # 3 and 10 are allowed


def test_gopher_ellipsis_lines():
    text = "\n".join(
        ["This line trails off into nothing at all..."] * 4 + ["This line is a complete sentence here."] * 6
    )
    assert gopher_quality_failures(text) == ["gopher_ellipsis_lines"]  # 4 / 10 > 30%
    ok = "\n".join(["This line trails off into nothing at all..."] * 3 + ["This line is a complete sentence here."] * 7)
    assert gopher_quality_filter(ok)  # exactly 30% is allowed
    assert gopher_quality_failures(ok.replace("...", "\u2026")) == []


def test_gopher_alphabetic_words():
    text = ENGLISH + " 123 456 --- !!! ### 7.5" * 10
    assert "gopher_alpha_words" in gopher_quality_failures(text)
    assert gopher_quality_filter(ENGLISH + " 123 456" * 5)


def test_gopher_rules_are_configurable():
    rules = GopherRules(min_words=5)
    assert gopher_quality_filter("The string you are reading is a short snippet of text.", rules)


# ---------------------------------------------------------------------------------------------- C4


def test_c4_keeps_sentences_and_drops_boilerplate_lines():
    text = "\n".join(
        [
            "Home | About | Contact",
            "This site uses cookies to improve your experience.",
            "Please enable JavaScript to view the comments.",
            "The river floods every spring and the town prepares well ahead.",
            "Short line.",
            "Farmers move their animals to higher ground in March.",
            "The mayor said the new wall worked well this year[1].",
            "Schools close for two days when the water is highest.",
            "Volunteers fill sandbags at the fire station every evening!",
            "Is the wall high enough for a hundred-year flood?",
            "Read more",
        ]
    )
    out, reason = c4_line_filter(text)
    assert reason is None
    assert out.split("\n") == [
        "The river floods every spring and the town prepares well ahead.",
        "Farmers move their animals to higher ground in March.",
        "The mayor said the new wall worked well this year.",
        "Schools close for two days when the water is highest.",
        "Volunteers fill sandbags at the fire station every evening!",
        "Is the wall high enough for a hundred-year flood?",
    ]


def test_c4_page_level_drops():
    assert c4_line_filter("Lorem ipsum dolor sit amet. " * 10) == ("", "c4_lorem_ipsum")
    assert c4_line_filter("function f() { return 1; } is code.") == ("", "c4_curly_bracket")
    assert c4_line_filter("One sentence only here.\nAnd a second one here.") == ("", "c4_too_few_sentences")
    assert c4_line_filter("no punctuation here\nnor here") == ("", "c4_no_lines_left")
    assert c4_line_filter("x { y } is fine here.", C4Rules(drop_curly_bracket=False, min_sentences=1))[1] is None


# ---------------------------------------------------------------------------------------------- repetition


def test_repetition_passes_varied_text():
    text = "\n\n".join(paragraph(seed) for seed in range(5))
    assert repetition_failures(text) == []


def test_repetition_duplicate_lines_and_paragraphs():
    lines = [paragraph(s, 12) for s in range(10)]
    text = "\n".join(lines + lines[:5])  # 5 of 15 lines repeat an earlier one: 33% > 30%
    failed = repetition_failures(text)
    assert "rep_dup_lines" in failed and "rep_dup_line_chars" in failed
    paras = [paragraph(s, 30) for s in range(4)]
    assert "rep_dup_paragraphs" in repetition_failures("\n\n".join(paras + paras[:2]))


def test_repetition_top_ngram_and_duplicate_ngrams():
    spam = paragraph(1, 200) + " buy now" * 60
    assert "rep_top_2gram" in repetition_failures(spam)
    repeated = paragraph(2, 100) + " " + paragraph(3, 40) * 2  # a 40-word passage twice
    assert [f for f in repetition_failures(repeated) if f.startswith("rep_dup_") and "gram" in f]
    loose = RepetitionRules(max_dup_ngram_char_fraction=[1.0] * 6, max_top_ngram_char_fraction=[1.0] * 3)
    assert repetition_failures(repeated, loose) == []


def test_repetition_short_texts_do_not_crash():
    assert repetition_failures("") == []
    assert repetition_failures("one two") == []
