from __future__ import annotations

import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchlm.tokenizer.chunks import ChunkStats, byte_cut, iter_byte_chunks, special_bytes_splitter
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN, special_splitter, split_special

PAT = regex.compile(GPT2_PATTERN)
SPECIALS = ["<|endoftext|>", "<|end|>"]
parts = st.sampled_from(["hello", " world", "  ", "\n", "\t", " 'll", "é", "中文", " ", "x", *SPECIALS, "<|end", "12"])


def pretokens(text: str) -> list[str]:
    out = []
    for piece, is_special in split_special(text, special_splitter(SPECIALS)):
        out += [piece] if is_special else PAT.findall(piece)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(parts, max_size=80), st.integers(16, 64))
def test_chunks_reassemble_and_preserve_pretokens(tmp_path, pieces, chunk_bytes):
    text = "".join(pieces) or "x"
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode())
    stats = ChunkStats()
    chunks = list(iter_byte_chunks(path, SPECIALS, chunk_bytes, stats))
    assert b"".join(chunks) == text.encode() and stats.bytes_read == len(text.encode())
    if stats.hard_cuts == 0:
        assert sum((pretokens(c.decode()) for c in chunks), []) == pretokens(text)


def test_byte_cut_prefers_special_tokens_and_avoids_partial_ones():
    splitter = special_bytes_splitter(SPECIALS)
    buf = b"one two<|endoftext|>three four five<|endof"
    cut = byte_cut(buf, splitter, len(b"<|endoftext|>"))
    # Not into the last 13 bytes (a special token may be arriving): the last safe space before them.
    assert cut == buf.index(b" four")
    # A special token that ends inside the last `keep` bytes might be the prefix of a longer one.
    assert byte_cut(b"one two<|endoftext|>three", splitter, 13) == len(b"one")
    assert byte_cut(b"one two<|endoftext|>three", splitter, 1) == len(b"one two<|endoftext|>")
    assert byte_cut(b"\xe4\xb8\xad\xe6\x96\x87 \xe4\xb8\xad", None, 1) == 0  # space before non-ASCII: no cut


def test_hard_cut_when_no_boundary_exists(tmp_path, caplog):
    path = tmp_path / "c.txt"
    path.write_bytes(("中" * 5000).encode())
    stats = ChunkStats()
    chunks = list(iter_byte_chunks(path, [], 256, stats))
    assert stats.hard_cuts > 0 and "cutting hard" in caplog.text
    assert all(c.decode("utf-8") for c in chunks)  # never inside a UTF-8 sequence
