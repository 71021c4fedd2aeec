"""Encoding and decoding with a trained byte-level BPE.

    tok = Tokenizer(vocab, merges, special_tokens=["<|endoftext|>"])
    ids = tok.encode("Hello world<|endoftext|>")
    text = tok.decode(ids)

Encoding = split out special tokens (longest match wins) -> GPT-2 regex -> BPE on each
pre-token's bytes, applying the lowest-rank merge first, as in GPT-2's `encoder.py`. Pre-token
ids are cached, and the hot loop is `chain(map(cache.__getitem__, findall(text)))`, so the
Python-level work per token is one dict lookup. With the compiled module and the GPT-2 pattern
that whole loop runs in C (`_bpe_encode.encode_pretokens`: a hand-written scanner equal to the
regex, fused with the cache lookups); the regex path remains the reference and the fallback.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from itertools import chain

from scratchlm.errors import ScratchLMError
from scratchlm.tokenizer.pretokenize import (
    GPT2_PATTERN,
    check_special_tokens,
    compile_pattern,
    special_splitter,
    split_special,
    stream_cut,
    unicode_classes,
)

try:
    from scratchlm.tokenizer._bpe_encode import Merger  # type: ignore[attr-defined]
except ImportError:  # no compiler at install time: the Python reference below is used
    Merger = None
try:  # imported apart from Merger: an extension built before it existed lacks it
    from scratchlm.tokenizer._bpe_encode import encode_pretokens  # type: ignore[attr-defined]
except ImportError:
    encode_pretokens = None

BUILD_HINT = "install a C compiler (e.g. `apt-get install gcc`) and reinstall scratchlm (`pip install -e .`)"


@functools.cache
def _warn_no_compiled_core() -> None:
    """Said once per process: encoding falls back to the Python merge loop (same ids, ~12x slower)."""
    logging.getLogger(__name__).warning(
        "compiled BPE encoder not built: encoding with the pure-Python loop (same ids, about 12x slower); %s",
        BUILD_HINT,
    )


END_OF_TEXT = "<|endoftext|>"  # GPT-2's document separator, preferred by `Tokenizer.end_of_text`
_CACHE_LIMIT = 1 << 20  # distinct pre-tokens remembered before the cache is cleared


class _PretokenCache(dict):
    """pre-token str -> tuple of ids; computes missing entries with the BPE merge rules.
    `drop`: bytes the vocabulary has no token for, removed before merging (`missing_bytes="drop"`)."""

    def __init__(self, bpe, drop: bytes = b""):
        super().__init__()
        self._bpe = bpe
        self._drop = drop

    def __missing__(self, piece: str) -> tuple[int, ...]:
        try:
            data = piece.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates are not Unicode text: U+FFFD, as tiktoken does
            data = piece.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")
        if self._drop:
            data = data.translate(None, self._drop)
        ids = self._bpe(data) if data else ()
        self[piece] = ids
        return ids


class Tokenizer:
    """Byte-level BPE tokenizer: `encode`, `encode_iterable`, `decode`.

    vocab: id -> token bytes. merges: (bytes, bytes) pairs in the order they were learned.
    special_tokens: strings never split or merged; those missing from `vocab` get new ids.
    missing_bytes: "error" (default) = every byte value must have a single-byte token; "drop" = a
        byte without one is skipped when encoding (some pretrained vocabularies, e.g. SmolLM2's, lack
        a few control bytes; Hugging Face tokenizers and llama.cpp skip them the same way).
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: Iterable[str] | None = None,
        pattern: str = GPT2_PATTERN,
        missing_bytes: str = "error",
    ):
        if missing_bytes not in ("error", "drop"):
            raise ScratchLMError(f"missing_bytes must be 'error' or 'drop', got {missing_bytes!r}")
        self.missing_bytes = missing_bytes
        self.vocab: dict[int, bytes] = dict(vocab)
        self.merges = list(merges)
        self.pattern = pattern
        self.special_tokens = check_special_tokens(special_tokens or ())
        # bytes -> id; the lowest id wins if two merges happened to build the same bytes
        self._id_of: dict[bytes, int] = {}
        for i in sorted(self.vocab):
            self._id_of.setdefault(self.vocab[i], i)
        next_id = max(self.vocab, default=-1) + 1
        self.special_ids: dict[str, int] = {}
        for s in self.special_tokens:
            b = s.encode("utf-8")
            if b not in self._id_of:
                self.vocab[next_id] = b
                self._id_of[b] = next_id
                next_id += 1
            self.special_ids[s] = self._id_of[b]
        missing = [i for i in range(256) if bytes([i]) not in self._id_of]
        if missing and missing_bytes == "error":
            raise ScratchLMError(f"vocabulary lacks single-byte tokens (e.g. byte {missing[0]}): not a byte-level BPE")
        self._missing = bytes(missing)
        self._byte_ids = [self._id_of.get(bytes([i]), 0) for i in range(256)]  # missing ones are never looked up
        # (id_a, id_b) -> (rank, merged id)
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(self.merges):
            try:
                key = (self._id_of[a], self._id_of[b])
                merged = self._id_of[a + b]
            except KeyError:
                raise ScratchLMError(
                    f"merge #{rank} {a!r} + {b!r} uses or makes a token missing from the vocabulary"
                ) from None
            self._ranks.setdefault(key, (rank, merged))
        if Merger is None:
            _warn_no_compiled_core()
        self._bpe = self._bpe_python if Merger is None else self._compiled_merger().encode
        self._pat = compile_pattern(pattern)
        self._splitter = special_splitter(self.special_tokens)
        self._max_special = max((len(s) for s in self.special_tokens), default=1)
        self._cache = _PretokenCache(self._bpe, self._missing)
        # The C scanner knows only the GPT-2 pattern; any other pattern goes through `regex`.
        fused = encode_pretokens is not None and pattern == GPT2_PATTERN
        self._classes: bytes | None = unicode_classes() if fused else None
        self._hash: str | None = None

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_files(cls, vocab_filepath, merges_filepath, special_tokens: Iterable[str] | None = None) -> Tokenizer:
        """Load GPT-2 format files (`vocab.json` with the byte-to-unicode mapping + `merges.txt`)."""
        from scratchlm.tokenizer.formats import read_gpt2

        vocab, merges = read_gpt2(vocab_filepath, merges_filepath)
        return cls(vocab, merges, special_tokens)

    @classmethod
    def load(cls, path) -> Tokenizer:
        """Load a tokenizer directory or file in the native or GPT-2 format (see `formats.load_tokenizer`)."""
        from scratchlm.tokenizer.formats import load_tokenizer

        return load_tokenizer(path)

    def save(self, directory, fmt: str = "both", overwrite: bool = False) -> None:
        """Write `directory` atomically: `tokenizer.json` (native), and/or `vocab.json` + `merges.txt` (GPT-2)."""
        from scratchlm.tokenizer.formats import save_tokenizer

        save_tokenizer(self, directory, fmt, overwrite)

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return max(self.vocab) + 1

    @property
    def hash(self) -> str:
        """sha256 of the vocab, merges, specials and pattern: identifies the tokenizer in token-file sidecars."""
        if self._hash is None:
            h = hashlib.sha256()
            payload = {
                "pattern": self.pattern,
                "special_tokens": self.special_tokens,
                "vocab": [[i, self.vocab[i].hex()] for i in sorted(self.vocab)],
                "merges": [[a.hex(), b.hex()] for a, b in self.merges],
            }
            if self.missing_bytes != "error":  # keeps the hash of every earlier tokenizer
                payload["missing_bytes"] = self.missing_bytes
            h.update(json.dumps(payload, separators=(",", ":")).encode())
            self._hash = h.hexdigest()
        return self._hash

    @property
    def end_of_text(self) -> str | None:
        """The special token that ends documents: `<|endoftext|>` if present, else the first special, else None.

        Corpus encoding counts documents with it, the data pipeline writes it between documents, and
        generation starts from it (empty prompt) and stops at it."""
        if END_OF_TEXT in self.special_ids:
            return END_OF_TEXT
        return self.special_tokens[0] if self.special_tokens else None

    @property
    def end_of_text_id(self) -> int | None:
        """The id of `end_of_text`, or None when the tokenizer has no special token."""
        token = self.end_of_text
        return None if token is None else self.special_ids[token]

    # ------------------------------------------------------------------ encoding
    def _compiled_merger(self):
        """The C twin of `_bpe_python` (`_bpe_encode.c`), built from the same rank table."""
        from array import array

        pairs, merged = array("q"), array("q")
        for (a, b), (_, m) in sorted(self._ranks.items(), key=lambda kv: kv[1][0]):
            pairs.append(a << 32 | b)
            merged.append(m)
        return Merger(pairs, merged, array("q", self._byte_ids))

    def __getstate__(self) -> dict:  # pickle the definition, not the caches / C objects
        return {
            "vocab": self.vocab,
            "merges": self.merges,
            "special_tokens": self.special_tokens,
            "pattern": self.pattern,
            "missing_bytes": self.missing_bytes,
        }

    def __setstate__(self, state: dict) -> None:
        missing = state.get("missing_bytes", "error")
        self.__init__(state["vocab"], state["merges"], state["special_tokens"], state["pattern"], missing)

    def _bpe_python(self, piece: bytes) -> tuple[int, ...]:
        """Apply merges to one pre-token: repeatedly merge the adjacent pair of lowest rank."""
        ids = [self._byte_ids[b] for b in piece]
        ranks = self._ranks
        while len(ids) > 1:
            best, best_pair = None, None
            for pair in zip(ids, ids[1:]):
                r = ranks.get(pair)
                if r is not None and (best is None or r < best):
                    best, best_pair = r, pair
            if best is None:
                break
            merged = best[1]
            a, b = best_pair
            out, i, n = [], 0, len(ids)
            while i < n:
                if i + 1 < n and ids[i] == a and ids[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        return tuple(ids)

    def _encode_ordinary(self, text: str, out: list[int]) -> None:
        """Append the ids of `text` (no special tokens in it) to `out`."""
        cache = self._cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        if self._classes is not None:  # same ids as below, fused in C; misses still go through cache.__missing__
            encode_pretokens(text, self._classes, cache, out)
        else:
            out.extend(chain.from_iterable(map(cache.__getitem__, self._pat.findall(text))))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens in the text become their ids."""
        out: list[int] = []
        if self._splitter is None:
            self._encode_ordinary(text, out)
            return out
        for piece, is_special in split_special(text, self._splitter):
            if is_special:
                out.append(self.special_ids[piece])
            else:
                self._encode_ordinary(piece, out)
        return out

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Stream the ids of the concatenation of `iterable` (e.g. a file's lines) in constant memory.

        Equal to `encode("".join(iterable))`: text is held back only up to the last point where
        the GPT-2 regex and special-token matching are known not to depend on what follows.
        """
        buf = ""
        for piece in iterable:
            buf += piece
            cut = stream_cut(buf, self._splitter, self._max_special)
            if cut:
                yield from self.encode(buf[:cut])
                buf = buf[cut:]
        if buf:
            yield from self.encode(buf)

    # ------------------------------------------------------------------ decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        vocab = self.vocab
        try:
            return b"".join([vocab[i] for i in ids])
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or i not in vocab)
            raise ScratchLMError(f"token id {bad!r} is outside the vocabulary (size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(list(ids)).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, special_tokens={self.special_tokens})"
        )
