from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_data import shared_file

from scratchlm.errors import ScratchLMError
from scratchlm.tokenizer import GPT2_PATTERN, Tokenizer, train_bpe_from_counts

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def gpt2(request):
    vocab = shared_file("tokenizer/gpt2_vocab.json")
    merges = shared_file("tokenizer/gpt2_merges.txt")
    return Tokenizer.from_files(vocab, merges, [EOT])


@pytest.fixture(scope="module")
def tiktoken_gpt2(tmp_path_factory):
    """tiktoken's gpt2 encoding built offline from the same two files (get_encoding needs the network)."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    vocab = shared_file("tokenizer/gpt2_vocab.json")
    merges = shared_file("tokenizer/gpt2_merges.txt")
    with_header = tmp_path_factory.mktemp("tt") / "vocab.bpe"
    with_header.write_text("#version: 0.2\n" + merges.read_text(encoding="utf-8"), encoding="utf-8")
    ranks = data_gym_to_mergeable_bpe_ranks(str(with_header), str(vocab))
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})


@pytest.mark.parametrize("name", ["text/tinystories_val.txt", "text/tinyshakespeare.txt", "text/owt_mini.txt"])
def test_equals_tiktoken_gpt2_on_shared_texts(gpt2, tiktoken_gpt2, name):
    text = shared_file(name).read_text(encoding="utf-8")
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_equals_tiktoken_and_roundtrips_on_arbitrary_unicode(gpt2, tiktoken_gpt2, text):
    ids = gpt2.encode(text)
    if EOT not in text:
        assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(ids) == text


@pytest.fixture(scope="module")
def small_tok():
    counts = {" the": 50, " cat": 20, "hello": 30, " world": 25, "é": 10, "中文": 5, "<|": 40}
    vocab, merges = train_bpe_from_counts(counts, 300, [EOT])
    return Tokenizer(vocab, merges, [EOT, "<|endoftext|><|endoftext|>", "<|pad|>"])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=300))
def test_roundtrip_trained_tokenizer(small_tok, text):
    assert small_tok.decode(small_tok.encode(text)) == text


def test_lone_surrogates_become_replacement_characters(small_tok):
    assert small_tok.decode(small_tok.encode("a\ud800b")) == "a\ufffdb"


def test_special_tokens_overlap_longest_wins_and_not_split(small_tok):
    eot, double = small_tok.special_ids[EOT], small_tok.special_ids[EOT * 2]
    assert small_tok.encode(EOT * 3) == [double, eot]
    ids = small_tok.encode(f"hello{EOT}world <|pad|><|pa")
    assert eot in ids and small_tok.special_ids["<|pad|>"] in ids
    assert small_tok.decode(ids) == f"hello{EOT}world <|pad|><|pa"
    # specials missing from the vocab got new ids after it
    assert small_tok.special_ids["<|pad|>"] == small_tok.vocab_size - 1


def test_without_special_tokens_the_text_is_ordinary(small_tok):
    plain = Tokenizer(small_tok.vocab, small_tok.merges)
    assert small_tok.special_ids[EOT] not in plain.encode(EOT)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["hello", " world", EOT, "<|end", "oftext|>", " ", "\n", "\n\n", "  x", "é", "中"]), max_size=40
    ),
    st.data(),
)
def test_encode_iterable_equals_encode_for_any_split(small_tok, parts, data):
    text = "".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert list(small_tok.encode_iterable(pieces)) == small_tok.encode(text)


def test_encode_iterable_equals_encode_on_a_large_file(gpt2):
    path = shared_file("text/owt_mini.txt")
    with open(path, encoding="utf-8") as f:
        streamed = list(gpt2.encode_iterable(f))
    assert streamed == gpt2.encode(path.read_text(encoding="utf-8"))


def test_encode_iterable_memory_is_constant(small_tok):
    line = "hello world the cat " * 5 + "\n"

    def lines(n):
        for _ in range(n):
            yield line

    def peak(n):
        small_tok.encode(line)  # warm the cache
        tracemalloc.start()
        count = sum(1 for _ in small_tok.encode_iterable(lines(n)))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return count, peak

    n_small, peak_small = peak(2_000)
    n_large, peak_large = peak(40_000)
    assert n_large == 20 * n_small
    assert peak_large < 2 * peak_small + 64_000  # 20x the input, no growth in memory


def test_decode_invalid_utf8_and_bad_ids(small_tok):
    e_acute = small_tok.encode("é")
    assert len(e_acute) == 2 or small_tok.vocab[e_acute[0]] == "é".encode()
    first_byte = small_tok._byte_ids[0xC3]
    assert small_tok.decode([first_byte]) == "\ufffd"
    with pytest.raises(ScratchLMError, match="token id 99999 is outside the vocabulary"):
        small_tok.decode([1, 99999])
    with pytest.raises(ScratchLMError, match="outside the vocabulary"):
        small_tok.decode([-1])


def test_merges_must_match_vocab():
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ScratchLMError, match="missing from the vocabulary"):
        Tokenizer(vocab, [(b"a", b"b")])
    with pytest.raises(ScratchLMError, match="lacks single-byte tokens"):
        Tokenizer({0: b"a"}, [])


@pytest.mark.parametrize(
    "specials, want",
    [([EOT], EOT), (["<pad>", EOT], EOT), (["<pad>", "<eos>"], "<pad>"), ([], None)],
    ids=["endoftext", "endoftext-not-first", "first-special", "none"],
)
def test_end_of_text_prefers_endoftext_then_the_first_special(specials, want):
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], specials)
    assert tok.end_of_text == want
    assert tok.end_of_text_id == (None if want is None else tok.special_ids[want])


def test_end_of_text_of_gpt2_is_its_last_id(gpt2):
    assert gpt2.end_of_text == EOT and gpt2.end_of_text_id == 50256


def test_compiled_and_python_bpe_agree_on_gpt2(gpt2):
    pytest.importorskip("scratchlm.tokenizer._bpe_encode", reason="compiled BPE encoder not built")
    import regex

    text = shared_file("text/tinyshakespeare.txt").read_text(encoding="utf-8")[:300_000]
    pieces = {p.encode("utf-8") for p in regex.findall(GPT2_PATTERN, text)} | {b"", b"a" * 600, bytes(range(256))}
    for piece in pieces:
        assert gpt2._bpe(piece) == gpt2._bpe_python(piece), piece


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_compiled_and_python_bpe_agree_on_arbitrary_bytes(small_tok, data):
    assert small_tok._bpe(data) == small_tok._bpe_python(data)


def test_pickles_by_definition(small_tok):
    import pickle

    text = f"hello world{EOT} the cat"
    clone = pickle.loads(pickle.dumps(small_tok))
    assert clone.encode(text) == small_tok.encode(text) and clone.hash == small_tok.hash


def test_missing_compiled_encoder_is_said_once(monkeypatch, caplog):
    """Without the C extension (no compiler at install) encoding still works, and says so once, with the fix."""
    import scratchlm.tokenizer.tokenizer as tmod

    monkeypatch.setattr(tmod, "Merger", None)
    tmod._warn_no_compiled_core.cache_clear()
    with caplog.at_level("WARNING"):
        for _ in range(2):
            tok = Tokenizer({i: bytes([i]) for i in range(256)} | {256: b"ab"}, [(b"a", b"b")], [])
            assert tok.encode("abab") == [256, 256]
    said = [r for r in caplog.records if "compiled BPE encoder not built" in r.message]
    assert len(said) == 1 and "apt-get install gcc" in said[0].message
