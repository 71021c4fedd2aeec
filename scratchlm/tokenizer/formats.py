"""Tokenizer files: the GPT-2 format and scratchlm's versioned native format.

GPT-2 format (openai/gpt-2, also read by tiktoken and Hugging Face):
  vocab.json   {token string: id}, bytes shown through GPT-2's byte-to-unicode table
  merges.txt   optional `#version: 0.2` line, then one merge per line: "a b" (same table)
Native format:
  tokenizer.json  {"format": "scratchlm-bpe", "version": 1, "pattern", "special_tokens",
                   "vocab": {id: token string}, "merges": [[a, b], ...]}  (same table)
A tokenizer directory written by scratchlm holds both, plus `meta.json` (how it was trained).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_dir, atomic_write, read_json, write_json

NATIVE_FORMAT = "scratchlm-bpe"
NATIVE_VERSION = 1
NATIVE_FILE = "tokenizer.json"
GPT2_VOCAB_FILE = "vocab.json"
GPT2_MERGES_FILE = "merges.txt"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the rest (control bytes, space, ...) are shifted
    to code points 256+, so every token is a visible string without whitespace.
    """
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_str(b: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[x] for x in b)


def str_to_token(s: str, where: str) -> bytes:
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in s)
    except KeyError as e:
        raise ScratchLMError(
            f"{where}: {s!r} has character {e.args[0]!r} outside GPT-2's byte-to-unicode table"
        ) from None


# ---------------------------------------------------------------------------------------------- GPT-2


def read_gpt2(vocab_path, merges_path) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Read GPT-2 `vocab.json` (encoder.json) + `merges.txt` (vocab.bpe)."""
    raw = read_json(vocab_path, "GPT-2 vocab.json")
    if not isinstance(raw, dict) or not all(isinstance(v, int) for v in raw.values()):
        hint = (
            " (it looks like a scratchlm/Hugging Face tokenizer.json)"
            if isinstance(raw, dict) and ("format" in raw or "model" in raw)
            else ""
        )
        raise ScratchLMError(f"{vocab_path} is not a GPT-2 vocab.json (expected {{token: id}}){hint}")
    vocab = {i: str_to_token(s, str(vocab_path)) for s, i in raw.items()}
    merges_path = Path(merges_path)
    if not merges_path.is_file():
        raise ScratchLMError(f"GPT-2 merges file not found: {merges_path}")
    merges = []
    with open(merges_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ScratchLMError(f"{merges_path}:{lineno}: expected two tokens separated by a space, got {line!r}")
            where = f"{merges_path}:{lineno}"
            merges.append((str_to_token(parts[0], where), str_to_token(parts[1], where)))
    return vocab, merges


def write_gpt2(tok, directory: Path) -> None:
    vocab = {token_to_str(tok.vocab[i]): i for i in sorted(tok.vocab)}
    write_json(directory / GPT2_VOCAB_FILE, vocab)
    with atomic_write(directory / GPT2_MERGES_FILE, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in tok.merges:
            f.write(f"{token_to_str(a)} {token_to_str(b)}\n")


def detect_special_tokens(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]]) -> list[str]:
    """Tokens that are neither a single byte nor the result of a merge: GPT-2's `<|endoftext|>`."""
    made = {a + b for a, b in merges}
    out = []
    for i in sorted(vocab):
        b = vocab[i]
        if len(b) > 1 and b not in made:
            try:
                out.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                continue
    return out


# ---------------------------------------------------------------------------------------------- native


def native_dict(tok) -> dict:
    return {
        "format": NATIVE_FORMAT,
        "version": NATIVE_VERSION,
        "pattern": tok.pattern,
        "special_tokens": tok.special_tokens,
        "hash": tok.hash,
        "vocab": {str(i): token_to_str(tok.vocab[i]) for i in sorted(tok.vocab)},
        "merges": [[token_to_str(a), token_to_str(b)] for a, b in tok.merges],
        "missing_bytes": tok.missing_bytes,
    }


def read_native(path: Path):
    from scratchlm.tokenizer.tokenizer import Tokenizer

    data = read_json(path, "scratchlm tokenizer file")
    if not isinstance(data, dict) or data.get("format") != NATIVE_FORMAT:
        kind = "a Hugging Face tokenizers file" if isinstance(data, dict) and "model" in data else "another format"
        raise ScratchLMError(f"{path} is {kind}, not a scratchlm tokenizer (format {NATIVE_FORMAT!r})")
    version = data.get("version")
    if version != NATIVE_VERSION:
        raise ScratchLMError(
            f"{path} is scratchlm tokenizer format version {version}; this scratchlm reads version {NATIVE_VERSION}"
        )
    try:
        vocab = {int(i): str_to_token(s, str(path)) for i, s in data["vocab"].items()}
        merges = [(str_to_token(a, str(path)), str_to_token(b, str(path))) for a, b in data["merges"]]
        tok = Tokenizer(vocab, merges, data["special_tokens"], data["pattern"], data.get("missing_bytes", "error"))
    except (KeyError, ValueError, TypeError) as e:
        raise ScratchLMError(f"{path} is a damaged scratchlm tokenizer file ({type(e).__name__}: {e})") from None
    if data.get("hash") not in (None, tok.hash):
        raise ScratchLMError(f"{path}: content does not match its recorded hash (file edited or damaged)")
    return tok


# ---------------------------------------------------------------------------------------------- dispatch


def load_tokenizer(path):
    """A scratchlm tokenizer directory, a native `tokenizer.json`, or a GPT-2 pair.

    For GPT-2 files the special tokens are those vocab entries no merge produces (`<|endoftext|>`).
    Accepted: a directory with `tokenizer.json` or `vocab.json` + `merges.txt`; a native `.json`
    file; or a GPT-2 vocab path whose merges file sits beside it as `merges.txt` / `*merges.txt`.
    """
    from scratchlm.tokenizer.tokenizer import Tokenizer

    path = Path(path)
    if path.is_dir():
        if (path / NATIVE_FILE).is_file():
            return read_native(path / NATIVE_FILE)
        if (path / GPT2_VOCAB_FILE).is_file() and (path / GPT2_MERGES_FILE).is_file():
            vocab, merges = read_gpt2(path / GPT2_VOCAB_FILE, path / GPT2_MERGES_FILE)
            return Tokenizer(vocab, merges, detect_special_tokens(vocab, merges))
        raise ScratchLMError(f"{path} holds no tokenizer ({NATIVE_FILE}, or {GPT2_VOCAB_FILE} + {GPT2_MERGES_FILE})")
    if not path.exists():
        raise ScratchLMError(f"tokenizer not found: {path}")
    data_head = path.read_bytes()[:4096]
    if b'"format"' in data_head and NATIVE_FORMAT.encode() in data_head:
        return read_native(path)
    stem = path.name.replace("vocab.json", "")
    for merges in (path.with_name(stem + "merges.txt"), path.with_name(GPT2_MERGES_FILE)):
        if merges.is_file():
            vocab, m = read_gpt2(path, merges)
            return Tokenizer(vocab, m, detect_special_tokens(vocab, m))
    return read_native(path)  # raises a clear error about the format


def save_tokenizer(tok, directory, fmt: str = "both", overwrite: bool = False, meta: dict | None = None) -> Path:
    """Write a tokenizer directory atomically (`fmt`: native, gpt2 or both) with `meta.json`."""
    if fmt not in ("native", "gpt2", "both"):
        raise ScratchLMError(f"unknown tokenizer format {fmt!r}: expected native, gpt2 or both")
    directory = Path(directory)
    with atomic_dir(directory, overwrite=overwrite) as tmp:
        if fmt in ("native", "both"):
            with atomic_write(tmp / NATIVE_FILE, "w", encoding="utf-8") as f:
                json.dump(native_dict(tok), f, ensure_ascii=False)
        if fmt in ("gpt2", "both"):
            write_gpt2(tok, tmp)
        from scratchlm import __version__

        write_json(
            tmp / "meta.json",
            {
                "format": NATIVE_FORMAT,
                "version": NATIVE_VERSION,
                "scratchlm_version": __version__,
                "hash": tok.hash,
                "vocab_size": tok.vocab_size,
                "num_merges": len(tok.merges),
                "special_tokens": tok.special_tokens,
                **(meta or {}),
            },
        )
    return directory
