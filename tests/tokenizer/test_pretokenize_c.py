"""The compiled GPT-2 pre-tokenizer (`_bpe_encode.pretokenize` / `encode_pretokens`) against `regex`."""

from __future__ import annotations

import sys
from array import array

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_data import shared_file

from scratchlm.tokenizer import tokenizer as tokenizer_module
from scratchlm.tokenizer.pretokenize import (
    CLASS_LETTER,
    CLASS_NUMBER,
    CLASS_SPACE,
    GPT2_PATTERN,
    unicode_classes,
)
from scratchlm.tokenizer.tokenizer import Tokenizer, _PretokenCache

_bpe_encode = pytest.importorskip(
    "scratchlm.tokenizer._bpe_encode",
    reason="compiled encoder not built (run `python setup.py build_ext --inplace`)",
)
if not hasattr(_bpe_encode, "encode_pretokens"):
    pytest.skip("compiled encoder predates the C pre-tokenizer: rebuild it", allow_module_level=True)

PAT = regex.compile(GPT2_PATTERN)
EOT = "<|endoftext|>"
SHARED_TEXTS = ["text/tinystories_val.txt", "text/tinyshakespeare.txt", "text/owt_mini.txt"]


def pretokenize(text: str) -> list[str]:
    return _bpe_encode.pretokenize(text, unicode_classes())


def all_code_points() -> str:
    codec = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"
    return array("I", range(0x110000)).tobytes().decode(codec, "surrogatepass")


# ---------------------------------------------------------------------------------------- the class table
def test_unicode_classes_agree_with_regex_on_every_code_point():
    table = unicode_classes()
    assert len(table) == 0x110000
    for bit, cls in ((CLASS_LETTER, r"\p{L}"), (CLASS_NUMBER, r"\p{N}"), (CLASS_SPACE, r"\s")):
        pat = regex.compile(cls)
        sample = list(range(0, 0x110000, 97)) + list(range(0x80)) + list(range(0xD7F0, 0xE010)) + [0x10FFFF]
        for c in sample:
            assert bool(table[c] & bit) == bool(pat.match(chr(c))), (hex(c), cls)
    assert table[0x1C] == 0 and table[0x20] == CLASS_SPACE and table[0xA0] == CLASS_SPACE  # regex's \s
    assert table[ord("'")] == 0 and table[0xD800] == 0  # apostrophe and surrogates: "other"


# ---------------------------------------------------------------------------------------- pretokenize == findall
# Characters that exercise every alternative and their boundaries: several kinds of whitespace
# (\x1c is str.isspace() but not regex's \s), contractions in both cases, apostrophes, numbers
# beyond ASCII digits, letters of several scripts, combining marks (\p{M}: "other"), emoji, ZWJ.
SPECIAL_PIECES = [
    " ", " ", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u00a0", "\u1680",
    "\u2028", "\u2029", "\u3000", "\u200b", "'", "'", "’", "'s", "'S", "'t", "'d", "'m", "'ll", "'LL", "'ve",
    "'re", "'Re", "'l", "'v", "0", "7", "42", "٣", "²", "½", "Ⅻ", "𝟘", "a", "Z", "é", "ß", "ж", "中", "ا",
    "क", "ि", "\u0301", "\u093f", "🙂", "👍🏽", "\u200d", ".", ",", "!", "-", "<|", "|>", "_", "$",
]  # fmt: skip
pieces = st.one_of(
    st.sampled_from(SPECIAL_PIECES),
    st.characters(),
    st.characters(categories=["Cs"]),  # lone surrogates: a str can hold them
)
texts = st.one_of(st.text(), st.lists(pieces, max_size=80).map("".join))


@settings(max_examples=3000, deadline=None)
@given(texts)
def test_pretokenize_equals_regex_findall(text):
    assert pretokenize(text) == PAT.findall(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "  ",
        "a  ",
        "a  b",
        "a \n b",
        "\n b",
        "'",
        "''s",
        "'s's",
        "!'s",
        " 's",
        " 'll",
        "'l",
        "'v",
        "don't",
        "I'LL",
        " 42 ٣²",
        "x\u00a0\u00a0y",
        "\ud800 a\udfff",
    ],
)
def test_pretokenize_examples(text):
    assert pretokenize(text) == PAT.findall(text)


def test_pretokenize_every_code_point_in_context():
    # every code point: alone in a run of its neighbours, after a space, and between whitespace
    everything = all_code_points()
    for text in (everything, " ".join(everything[::3]), "  ".join(everything[1::3]), "\n".join(everything[2::3])):
        assert pretokenize(text) == PAT.findall(text)


@pytest.mark.parametrize("name", SHARED_TEXTS)
def test_pretokenize_equals_regex_on_shared_texts(name):
    text = shared_file(name).read_text(encoding="utf-8")
    assert pretokenize(text) == PAT.findall(text)


def test_pretokenize_checks_arguments():
    with pytest.raises(TypeError):
        _bpe_encode.pretokenize(b"bytes", unicode_classes())
    with pytest.raises(TypeError):
        _bpe_encode.pretokenize("text", b"short")
    with pytest.raises(TypeError):
        _bpe_encode.pretokenize("text")
    with pytest.raises(ValueError):
        _bpe_encode.pretokenize("text", bytes(0x110000))  # U+0020 not marked as whitespace


# ---------------------------------------------------------------------------------------- encode_pretokens
@pytest.fixture(scope="module")
def gpt2_pair():
    """Two GPT-2 tokenizers: the fused C path and the regex reference path."""
    vocab, merges = shared_file("tokenizer/gpt2_vocab.json"), shared_file("tokenizer/gpt2_merges.txt")
    fused = Tokenizer.from_files(vocab, merges, [EOT])
    reference = Tokenizer.from_files(vocab, merges, [EOT])
    reference._classes = None  # force `regex.findall` + cache lookups
    assert fused._classes is not None
    return fused, reference


@pytest.mark.parametrize("name", SHARED_TEXTS)
def test_encode_equals_regex_path_on_shared_texts(gpt2_pair, name):
    fused, reference = gpt2_pair
    text = shared_file(name).read_text(encoding="utf-8")
    text = text[:2_000_000] + EOT + "tail 's" + EOT  # specials inside the text, too
    expected = reference.encode(text)
    assert fused.encode(text) == expected  # cold-ish cache
    assert fused.encode(text) == expected  # warm cache


@settings(max_examples=1000, deadline=None)
@given(texts)
def test_encode_equals_regex_path(gpt2_pair, text):
    fused, reference = gpt2_pair
    assert fused.encode(text) == reference.encode(text)


def test_encode_pretokens_appends_cache_values():
    text = "Hello  world's 42!"
    cache = {p: (i, i + 100) for i, p in enumerate(PAT.findall(text))}
    out = [-1]
    assert _bpe_encode.encode_pretokens(text, unicode_classes(), cache, out) is None
    assert out == [-1] + [x for p in PAT.findall(text) for x in cache[p]]


def test_encode_pretokens_miss_calls_missing_which_fills_the_cache():
    class Lengths(dict):
        def __missing__(self, key):
            self[key] = value = (len(key),)
            return value

    cache, out = Lengths(), []
    _bpe_encode.encode_pretokens("ab ab  c", unicode_classes(), cache, out)
    assert out == [2, 3, 1, 2]
    assert cache == {"ab": (2,), " ab": (3,), " ": (1,), " c": (2,)}


def test_encode_pretokens_accepts_non_tuple_values():
    out = []
    _bpe_encode.encode_pretokens("a b", unicode_classes(), {"a": [1, 2], " b": range(3, 5)}, out)
    assert out == [1, 2, 3, 4]


def test_exception_in_missing_propagates():
    class Failing(dict):
        def __missing__(self, key):
            raise RuntimeError(f"no ids for {key!r}")

    out = []
    with pytest.raises(RuntimeError, match="no ids for ' world'"):
        _bpe_encode.encode_pretokens("hello world", unicode_classes(), Failing(hello=(1,)), out)
    assert out == [1]
    with pytest.raises(KeyError):  # a plain dict has no __missing__
        _bpe_encode.encode_pretokens("hello", unicode_classes(), {}, out)
    with pytest.raises(TypeError):
        _bpe_encode.encode_pretokens("hello", unicode_classes(), {"hello": 5}, out)
    with pytest.raises(TypeError):
        _bpe_encode.encode_pretokens("hello", unicode_classes(), {}, ())


def test_exception_in_bpe_propagates_through_tokenizer(gpt2_pair):
    fused, _ = gpt2_pair

    def boom(data: bytes):
        raise ValueError(f"cannot merge {data!r}")

    tok = Tokenizer(fused.vocab, fused.merges, [EOT])
    tok._cache = _PretokenCache(boom)
    with pytest.raises(ValueError, match="cannot merge"):
        tok.encode("some text")


def test_cache_limit_still_clears(gpt2_pair, monkeypatch):
    fused, reference = gpt2_pair
    tok = Tokenizer(fused.vocab, fused.merges, [EOT])
    monkeypatch.setattr(tokenizer_module, "_CACHE_LIMIT", 3)
    tok.encode("one two three four five")
    assert len(tok._cache) == 5
    assert tok.encode("six") == reference.encode("six")
    assert list(tok._cache) == ["six"]  # cleared first, as on the regex path


def test_other_patterns_use_regex():
    vocab = {i: bytes([i]) for i in range(256)}
    tok = Tokenizer(vocab, [], pattern=r"\S+|\s+")
    assert tok._classes is None
    assert tok.encode("ab c") == [ord("a"), ord("b"), ord(" "), ord("c")]
