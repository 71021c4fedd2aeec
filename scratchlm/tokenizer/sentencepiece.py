"""SentencePiece-style BPE read from GGUF metadata (`tokenizer.ggml.model = "llama"`, e.g. Gemma 3).

    tok = SentencePieceBPE.from_gguf_fields(fields)  # {"tokenizer.ggml.tokens": [...], ...}
    ids = tok.encode("<start_of_turn>user\nHi there<end_of_turn>")  # no <bos>: add it yourself
    text = tok.decode(ids)

A GGUF stores such a vocabulary as three lists (token strings, scores, types: 1 normal, 2 unknown,
3 control, 4 user-defined, 5 unused, 6 byte) and no merges. Encoding is the algorithm of the reference,
transformers' GGUF `gemma_tokenizer` (a `tokenizers` BPE with byte fallback):

1. Special tokens. Every control token (type 3) and user-defined one (type 4) written in the text becomes
   its id, matched leftmost-longest on the raw text (the `tokenizers` added-token trie). In Gemma that is
   `<bos>`, `<start_of_turn>`, `<unusedN>`, runs of 1-31 newlines or tabs and some HTML tags.
2. The text between them: " " -> "▁" (U+2581); nothing else (no prefix space, no NFKC, no pre-split).
3. BPE on that text. Start from its characters; a character with no token becomes the byte tokens of its
   UTF-8 (`<0xNN>`, "byte fallback"), else `<unk>`. Then repeatedly merge the adjacent pair of lowest rank,
   the leftmost of equals, with a heap over a linked list (as `tokenizers`' `Word::merge_all`).
   The merges are derived from the vocabulary: each token t that splits as l + r with both l and r tokens
   gives the merge (l, r) -> t, ranked by t's position in the file, then by longer l first.
   Tokens made only of spaces ("  ", stored so by Gemma's converter) are spelled with "▁" first, or the
   space runs that step 2 produces could never merge into them.

Merge priority: file order, not scores. llama.cpp's SPM tokenizer (`llm_tokenizer_spm_session`) merges
the pair whose text makes the highest-scoring token (the leftmost of equals), any two symbols whose text
is a token, and before that takes every control / user-defined token out of the text, longest first --
Gemma's runs of 2-31 spaces among them. For Gemma 3 the two orders agree on normal tokens (their scores
fall strictly with the position); they part on the others, whose scores are placeholders (-1000 for
control and user-defined, 0 for bytes). llama.cpp never merges into the space runs, so it does not feel
that; scores on this pipeline would: "▁▁" would rank with token #1494 and "a  the" become a ▁ ▁the
(16 of the 48,659 lines tried from the shared texts change). We follow file order: it is what
transformers does, the reference our tests compare against, and it needs no separate matching of
space runs.
Measured against a Python port of llama.cpp's algorithm, the ids are the same on all 89,196 lines of
the shared texts (tinystories, tinyshakespeare, owt_mini); they differ on runs of more than 31 spaces
(here 16 + 16 spaces, llama.cpp 31 + the rest) and on text that itself holds "▁" beside a space.
(This module's `SentencePieceBPE` does not implement llama.cpp's rule; the port lived in a scratch script.)

Caching. With no pre-tokenizer, merges may cross a "▁", so the text cannot simply be cut at spaces.
It can be cut just before a "▁" that follows a character c when no token contains c followed by "▁"
(no token could span the cut, so no merge crosses it and both sides merge as in the whole). Gemma
has one token with such a c (">▁</"), so the text is cut before every "▁" that follows anything but
">" or a character with no token (byte-fallback spellings end with ">"), and each piece's ids are
cached: most of the work is then one dict lookup per word.

Decoding: "▁" -> " ", byte tokens give their byte; `decode` turns each run of byte tokens that is not
valid UTF-8 into one U+FFFD per byte, as the reference's ByteFallback decoder does (`decode_bytes` gives
the raw bytes). Control tokens decode to their text, like special tokens in `Tokenizer.decode`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import regex

from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_dir, atomic_write, read_json, write_json
from scratchlm.tokenizer.pretokenize import split_special, stream_cut

FORMAT, VERSION, FILE = "scratchlm.sentencepiece_bpe", 1, "tokenizer.json"
SPACE = "\u2581"  # "▁", SentencePiece's spelling of a space
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_CACHE_LIMIT = 1 << 20  # distinct pieces remembered before the cache is cleared
_CACHE_MAX_LEN = 256  # longer pieces (e.g. a paragraph of CJK, no spaces) are not cached
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_NEVER = regex.compile(r"(?r)[^\s\S]")  # a safe-cut pattern that never matches

# constructor argument -> GGUF metadata key, for error messages and `from_gguf_fields`
GGUF_KEYS = {
    "tokens": "tokenizer.ggml.tokens",
    "scores": "tokenizer.ggml.scores",
    "token_types": "tokenizer.ggml.token_type",
    "bos_id": "tokenizer.ggml.bos_token_id",
    "eos_id": "tokenizer.ggml.eos_token_id",
    "unk_id": "tokenizer.ggml.unknown_token_id",
    "pad_id": "tokenizer.ggml.padding_token_id",
    "add_bos": "tokenizer.ggml.add_bos_token",
    "add_eos": "tokenizer.ggml.add_eos_token",
    "add_space_prefix": "tokenizer.ggml.add_space_prefix",
}


def _check_definition(d: dict, name) -> None:
    """Raise naming `name(field)` when the definition `d` (constructor arguments) is malformed."""
    tokens, scores, types = d["tokens"], d["scores"], d["token_types"]
    # (checks over sets of types and values: a 262k vocabulary is checked in milliseconds)
    if not isinstance(tokens, list) or not tokens or set(map(type, tokens)) != {str}:
        raise ScratchLMError(f"{name('tokens')} must be a non-empty list of strings")
    n = len(tokens)
    for field, values in (("scores", scores), ("token_types", types)):
        if not isinstance(values, list) or len(values) != n:
            got = len(values) if isinstance(values, list) else type(values).__name__
            raise ScratchLMError(f"{name(field)} must be a list as long as {name('tokens')} ({n}), got {got}")
    if not set(map(type, scores)) <= {int, float}:
        raise ScratchLMError(f"{name('scores')} must hold numbers")
    bad = [t for t in set(types) if type(t) is not int or not 0 <= t <= BYTE]
    if bad:
        raise ScratchLMError(f"{name('token_types')} holds {bad[0]!r}: expected 0..6 (1 normal ... 6 byte)")
    for field in ("bos_id", "eos_id", "unk_id", "pad_id"):
        v = d[field]
        if v is None and field == "pad_id":
            continue
        if type(v) is not int or not 0 <= v < n:
            raise ScratchLMError(f"{name(field)} is {v!r}: expected a token id in [0, {n})")
    for field in ("add_bos", "add_eos", "add_space_prefix"):
        if not isinstance(d[field], bool):
            raise ScratchLMError(f"{name(field)} is {d[field]!r}: expected true or false")
    for i, (t, k) in enumerate(zip(tokens, types)):
        if k == BYTE and not _BYTE_TOKEN.fullmatch(t):
            raise ScratchLMError(f"{name('tokens')}[{i}] = {t!r} is a byte token (type 6) not spelled <0xNN>")


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex matching any of `words`, the longest one at the leftmost position (`tokenizers`' added-token
    trie is leftmost-longest). Written as a trie ("<s(?:tart|...)") rather than 6,000 alternatives, which
    `re` would try one by one at every newline of the text: deeper branches come first, and a word that
    ends at a node makes the rest optional, so backtracking settles on the longest word."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        alts = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body  # a word ends here: the longer ones are optional

    return emit(trie)


def _respell(token: str) -> str:
    """Gemma's GGUF stores its tokens of spaces as real spaces; the text they must match reads "▁"."""
    return SPACE * len(token) if token and token == " " * len(token) else token


class SentencePieceBPE:
    """SentencePiece BPE with byte fallback: `encode`, `encode_iterable`, `decode` (see the module docstring).

    tokens / scores / token_types: the GGUF lists, one entry per id. `scores` are kept (saved, hashed) but
    do not rank merges: the file order does. add_bos / add_eos: what a caller should add around a
    document (`encode` adds neither). add_space_prefix: put "▁" before text that starts the input (as
    transformers' Metaspace "first"); decoding does not strip it.
    """

    def __init__(
        self,
        tokens: list[str],
        scores: list[float],
        token_types: list[int],
        *,
        bos_id: int,
        eos_id: int,
        unk_id: int,
        pad_id: int | None = None,
        add_bos: bool,
        add_eos: bool = False,
        add_space_prefix: bool = False,
    ):
        d = dict(tokens=tokens, scores=scores, token_types=token_types, bos_id=bos_id, eos_id=eos_id)
        d.update(unk_id=unk_id, pad_id=pad_id, add_bos=add_bos, add_eos=add_eos, add_space_prefix=add_space_prefix)
        _check_definition(d, str)
        self.tokens, self.scores, self.token_types = list(tokens), [float(s) for s in scores], list(token_types)
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = bos_id, eos_id, unk_id, pad_id
        self.add_bos, self.add_eos, self.add_space_prefix = add_bos, add_eos, add_space_prefix
        self._hash: str | None = None
        self._build()

    def _build(self) -> None:
        spelled = [_respell(t) for t in self.tokens]
        n = len(spelled)
        # spelling -> id; with duplicates the last wins, as in the reference's {token: index} dict
        self._id_of = id_of = {t: i for i, t in enumerate(spelled)}
        self._byte_ids = [id_of.get(f"<0x{b:02X}>") for b in range(256)]
        # Merges: (left id, right id) -> rank, keyed as left * n + right; rank -> merged id.
        self._key_base = n
        self._rank: dict[int, int] = {}
        self._merged: list[int] = []
        get, rank, merged = id_of.get, self._rank, self._merged
        for i, t in enumerate(spelled):
            if len(t) < 2 or get(t) != i:
                continue  # nothing to split, or an earlier duplicate (its string belongs to the later id)
            for k in range(len(t) - 1, 0, -1):  # longer left part first
                left = get(t[:k])
                if left is not None and (right := get(t[k:])) is not None:
                    rank[left * n + right] = len(merged)
                    merged.append(i)
        # Special tokens: control, and user-defined ones still spelled as in the file (not the space runs).
        self.special_ids: dict[str, int] = {}
        for i, (t, k) in enumerate(zip(self.tokens, self.token_types)):
            if t and (k == CONTROL or (k == USER_DEFINED and spelled[i] == t)):
                self.special_ids.setdefault(t, id_of[t])
        self.special_tokens = list(self.special_ids)
        self._splitter = re.compile(_trie_pattern(self.special_tokens)) if self.special_tokens else None
        self._max_special = max(map(len, self.special_tokens), default=1)
        # Where a piece may be cut: before a "▁" that follows a character of `_safe_end` (module docstring).
        with_space = [t for t in spelled if SPACE in t[1:]]
        bridge = {t[j - 1] for t in with_space for j in range(1, len(t)) if t[j] == SPACE and t[j - 1] != SPACE}
        chars = {t for t in spelled if len(t) == 1}
        self._safe_end = frozenset(chars - bridge - {SPACE})
        self._pieces = re.compile(f"{SPACE}*[^{SPACE}]+|{SPACE}+").findall if SPACE in id_of else None
        self._safe_cut: regex.Pattern | None = None  # built by `encode_iterable` when first needed
        self._cache: dict[str, tuple[int, ...]] = {}
        # decoding tables: byte value (-1 if not a byte token), text, and bytes of each id
        self._byte_of = [int(t[3:5], 16) if _BYTE_TOKEN.fullmatch(t) else -1 for t in spelled]
        self._text_of = [t.replace(SPACE, " ") for t in spelled]
        self._bytes_of = [bytes([b]) if b >= 0 else s.encode() for b, s in zip(self._byte_of, self._text_of)]

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_gguf_fields(cls, fields: dict) -> SentencePieceBPE:
        """Build from GGUF metadata: a dict keyed by GGUF key names, values as plain Python lists/ints/bools."""
        model = fields.get("tokenizer.ggml.model")
        if model is not None and model != "llama":
            raise ScratchLMError(f"tokenizer.ggml.model is {model!r}: SentencePieceBPE reads 'llama' vocabularies")
        if "tokenizer.ggml.merges" in fields:
            raise ScratchLMError(
                "tokenizer.ggml.merges is set: SentencePieceBPE derives merges from the token order and "
                "does not read a merges list"
            )
        args = {}
        for arg in ("tokens", "scores", "token_types", "bos_id", "eos_id", "unk_id"):
            if GGUF_KEYS[arg] not in fields:
                raise ScratchLMError(f"GGUF tokenizer metadata lacks {GGUF_KEYS[arg]}")
            args[arg] = fields[GGUF_KEYS[arg]]
        args["pad_id"] = fields.get(GGUF_KEYS["pad_id"])
        # llama.cpp's defaults when a key is absent: BOS added, no EOS, a prefix space for SentencePiece
        for arg, default in (("add_bos", True), ("add_eos", False), ("add_space_prefix", True)):
            args[arg] = fields.get(GGUF_KEYS[arg], default)
        _check_definition(args, GGUF_KEYS.__getitem__)
        tokens, scores, types = args.pop("tokens"), args.pop("scores"), args.pop("token_types")
        return cls(tokens, scores, types, **args)

    def definition(self) -> dict:
        """Every field, JSON-ready: what `save` writes and `hash` digests."""
        return {
            "tokens": self.tokens,
            "scores": self.scores,
            "token_types": self.token_types,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "unk_id": self.unk_id,
            "pad_id": self.pad_id,
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
            "add_space_prefix": self.add_space_prefix,
        }

    def save(self, directory, overwrite: bool = False) -> Path:
        """Write `directory/tokenizer.json` (and `meta.json`) atomically."""
        from scratchlm import __version__

        directory = Path(directory)
        if any(not math.isfinite(s) for s in self.scores):
            raise ScratchLMError("cannot save a tokenizer whose scores include inf/NaN (not valid JSON)")
        with atomic_dir(directory, overwrite=overwrite) as tmp:
            with atomic_write(tmp / FILE, "w", encoding="utf-8") as f:
                json.dump({"format": FORMAT, "version": VERSION, "hash": self.hash, **self.definition()}, f)
            meta = {"format": FORMAT, "version": VERSION, "scratchlm_version": __version__, "hash": self.hash}
            write_json(tmp / "meta.json", {**meta, "vocab_size": self.vocab_size})
        return directory

    @classmethod
    def load(cls, path) -> SentencePieceBPE:
        """Read what `save` wrote: the directory or its `tokenizer.json`."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE
        data = read_json(path, "SentencePiece tokenizer file")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ScratchLMError(f"{path} is not a scratchlm SentencePiece tokenizer (format {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ScratchLMError(f"{path} is format version {data.get('version')!r}; this scratchlm reads {VERSION}")
        fields = ("tokens", "scores", "token_types", "bos_id", "eos_id", "unk_id", "pad_id", "add_bos")
        fields += ("add_eos", "add_space_prefix")
        missing = [k for k in fields if k not in data]
        if missing:
            raise ScratchLMError(f"{path} is a damaged SentencePiece tokenizer file (no {missing[0]!r})")
        try:
            tok = cls(data["tokens"], data["scores"], data["token_types"], **{k: data[k] for k in fields[3:]})
        except ScratchLMError as e:
            raise ScratchLMError(f"{path} is a damaged SentencePiece tokenizer file ({e})") from None
        if data.get("hash") != tok.hash:
            raise ScratchLMError(f"{path}: content does not match its recorded hash (file edited or damaged)")
        return tok

    def __getstate__(self) -> dict:  # worker processes get the definition and rebuild the tables
        return self.definition()

    def __setstate__(self, state: dict) -> None:
        d = dict(state)
        self.__init__(d.pop("tokens"), d.pop("scores"), d.pop("token_types"), **d)

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def num_merges(self) -> int:
        return len(self._merged)

    @property
    def bos_token_id(self) -> int:
        return self.bos_id

    @property
    def eos_token_id(self) -> int:
        return self.eos_id

    @property
    def add_bos_token(self) -> bool:
        return self.add_bos

    @property
    def add_eos_token(self) -> bool:
        return self.add_eos

    @property
    def end_of_text_id(self) -> int:
        """The id that ends documents and generation: the EOS token."""
        return self.eos_id

    @property
    def end_of_text(self) -> str:
        return self.tokens[self.eos_id]

    @property
    def hash(self) -> str:
        """sha256 of `definition()`: identifies the tokenizer in token-file sidecars."""
        if self._hash is None:
            payload = json.dumps(self.definition(), separators=(",", ":"), ensure_ascii=False)
            self._hash = hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()
        return self._hash

    # ------------------------------------------------------------------ encoding
    def _symbols(self, piece: str) -> list[int]:
        """Initial symbols: one token per character, else its byte tokens, else <unk> (runs of <unk> fused).

        (`tokenizers` leaves a pending <unk> after byte tokens that follow it; with a full byte table, as
        Gemma's, <unk> never happens and the two agree.)"""
        id_of, byte_ids, out, unk = self._id_of, self._byte_ids, [], False
        for c in piece:
            i = id_of.get(c)
            if i is not None:
                out.append(i)
                unk = False
                continue
            fallback = [byte_ids[b] for b in c.encode("utf-8")]
            if None not in fallback:
                out.extend(fallback)
                unk = False
            elif not unk:
                out.append(self.unk_id)
                unk = True
        return out

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """Merge `piece`'s symbols: always the adjacent pair of lowest rank, the leftmost of equals."""
        try:
            piece.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates are not Unicode text: U+FFFD, as `Tokenizer` does
            piece = piece.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids = self._symbols(piece)
        n = len(ids)
        if n < 2:
            return tuple(ids)
        rank, merged, base = self._rank, self._merged, self._key_base
        nxt = list(range(1, n + 1))  # linked list over positions; -1 ends it, a merged-away id becomes -1
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = [(r, i) for i in range(n - 1) if (r := rank.get(ids[i] * base + ids[i + 1])) is not None]
        heapq.heapify(heap)
        while heap:
            r, i = heapq.heappop(heap)
            j = nxt[i]
            # stale entries: i was merged into its left neighbour, or the pair at i has changed since
            if ids[i] < 0 or j < 0 or rank.get(ids[i] * base + ids[j]) != r:
                continue
            ids[i], ids[j] = merged[r], -1
            nxt[i] = k = nxt[j]
            if k >= 0:
                prv[k] = i
                if (r2 := rank.get(ids[i] * base + ids[k])) is not None:
                    heapq.heappush(heap, (r2, i))
            h = prv[i]
            if h >= 0 and (r2 := rank.get(ids[h] * base + ids[i])) is not None:
                heapq.heappush(heap, (r2, h))
        return tuple(i for i in ids if i >= 0)

    def _encode_plain(self, text: str, out: list[int], at_start: bool) -> None:
        """Append the ids of `text` (no special token in it)."""
        text = text.replace(" ", SPACE)
        if at_start and self.add_space_prefix and not text.startswith(SPACE):
            text = SPACE + text
        if self._pieces is None:
            out.extend(self._bpe(text))
            return
        cache, safe_end, extend = self._cache, self._safe_end, out.extend
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        held = ""
        for piece in self._pieces(text):
            if held:
                piece, held = held + piece, ""
            if piece[-1] not in safe_end:  # a token may span the cut after it: keep it with the next piece
                held = piece
            elif (ids := cache.get(piece)) is not None:
                extend(ids)
            else:
                ids = self._bpe(piece)
                if len(piece) <= _CACHE_MAX_LEN:
                    cache[piece] = ids
                extend(ids)
        if held:
            extend(self._bpe(held))

    def _encode(self, text: str, out: list[int], at_start: bool) -> None:
        for piece, is_special in split_special(text, self._splitter):
            if is_special:
                out.append(self.special_ids[piece])
            else:
                self._encode_plain(piece, out, at_start)
            at_start = False

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in it become their ids. No BOS/EOS is added."""
        out: list[int] = []
        self._encode(text, out, at_start=True)
        return out

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Stream the ids of the concatenation of `iterable` (e.g. a file's lines) in bounded memory.

        Equal to `encode("".join(iterable))`: text is held back up to the last point where special-token
        matching and merging are known not to depend on what follows (a special token's end, or a space
        after a character of `_safe_end`).
        """
        if self._safe_cut is None:  # the cut of `_encode_plain` on raw text: a space after a `_safe_end` char
            cls = "".join(regex.escape(c) for c in sorted(self._safe_end - {" "}))
            self._safe_cut = regex.compile(f"(?r)(?<=[{cls}]) ") if cls and self._pieces else _NEVER
        buf, at_start = "", True
        for piece in iterable:
            buf += piece
            cut = stream_cut(buf, self._splitter, self._max_special, self._safe_cut)
            if cut:
                out: list[int] = []
                self._encode(buf[:cut], out, at_start)
                yield from out
                buf, at_start = buf[cut:], False
        if buf:
            out = []
            self._encode(buf, out, at_start)
            yield from out

    # ------------------------------------------------------------------ decoding
    def _check_ids(self, ids: list) -> None:
        n = len(self.tokens)
        try:
            ok = not ids or (min(ids) >= 0 and max(ids) < n and all(type(i) is int for i in ids))
        except TypeError:
            ok = False
        if not ok:
            bad = next(i for i in ids if type(i) is not int or not 0 <= i < n)
            raise ScratchLMError(f"token id {bad!r} is outside the vocabulary (size {n})")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of `ids`: byte tokens give their byte, other tokens their text in UTF-8 ("▁" -> " ")."""
        ids = list(ids)
        self._check_ids(ids)
        bytes_of = self._bytes_of
        return b"".join([bytes_of[i] for i in ids])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; a run of byte tokens that is not valid UTF-8 gives one U+FFFD per byte."""
        ids = list(ids)
        self._check_ids(ids)
        byte_of, text_of, parts, run = self._byte_of, self._text_of, [], bytearray()
        for i in ids:
            b = byte_of[i]
            if b >= 0:
                run.append(b)
                continue
            if run:
                parts.append(_decode_run(run))
                run = bytearray()
            parts.append(text_of[i])
        if run:
            parts.append(_decode_run(run))
        return "".join(parts)

    def __repr__(self) -> str:
        return (
            f"SentencePieceBPE(vocab_size={self.vocab_size}, merges={self.num_merges}, "
            f"special_tokens={len(self.special_tokens)}, bos={self.tokens[self.bos_id]!r}, "
            f"eos={self.tokens[self.eos_id]!r}, add_bos={self.add_bos})"
        )


def _decode_run(run: bytearray) -> str:
    try:
        return run.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(run)
