"""Token files: a flat array of token ids plus a JSON sidecar (`<file>.json`).

This is what `scratchlm tokenizer encode` writes and what training memory-maps. The sidecar
names the tokenizer (hash) so a model is never trained on ids of another vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scratchlm.errors import ScratchLMError
from scratchlm.io import read_json

TOKENS_FORMAT = "scratchlm-tokens"
TOKENS_VERSION = 1


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


TOKEN_DTYPES = ("uint16", "uint32")  # the only id types a token file holds (token_dtype)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65,536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def read_token_meta(path: str | Path) -> dict:
    meta = read_json(sidecar_path(path), "token file sidecar")
    if not isinstance(meta, dict) or meta.get("format") != TOKENS_FORMAT:
        raise ScratchLMError(f"{sidecar_path(path)} is not a scratchlm token-file sidecar")
    if meta.get("version") != TOKENS_VERSION:
        raise ScratchLMError(
            f"{path} is token-file version {meta.get('version')}; this scratchlm reads version {TOKENS_VERSION}"
        )
    bad = f"{sidecar_path(path)} is damaged:"
    if meta.get("dtype") not in TOKEN_DTYPES:
        raise ScratchLMError(f"{bad} dtype {meta.get('dtype')!r} is not one of {', '.join(TOKEN_DTYPES)}")
    count = meta.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ScratchLMError(f"{bad} count {count!r} is not a number of tokens")
    vocab = meta.get("vocab_size")
    if vocab is not None and (not isinstance(vocab, int) or vocab < 1 or np.dtype(meta["dtype"]) != token_dtype(vocab)):
        raise ScratchLMError(f"{bad} vocab_size {vocab!r} does not fit its dtype {meta['dtype']}")
    tok_hash = meta.get("tokenizer_hash")
    if tok_hash is not None and not isinstance(tok_hash, str):
        raise ScratchLMError(f"{bad} tokenizer_hash {tok_hash!r} is not a string")
    return meta


def open_tokens(path: str | Path, expect_tokenizer_hash: str | None = None) -> tuple[np.memmap, dict]:
    """Memory-map a token file (never read whole into RAM) after checking it against its sidecar."""
    path = Path(path)
    if not path.is_file():
        raise ScratchLMError(f"token file not found: {path}")
    meta = read_token_meta(path)
    dtype = np.dtype(meta["dtype"])
    size = path.stat().st_size
    if size != meta["count"] * dtype.itemsize:
        raise ScratchLMError(
            f"{path} has {size} bytes but its sidecar says {meta['count']} {dtype} tokens: truncated or replaced"
        )
    if expect_tokenizer_hash is not None and meta.get("tokenizer_hash") != expect_tokenizer_hash:
        raise ScratchLMError(
            f"{path} was encoded with another tokenizer (hash {(meta.get('tokenizer_hash') or '?')[:12]})"
        )
    if meta["count"] == 0:
        return np.zeros(0, dtype=dtype), meta  # np.memmap cannot map an empty file
    return np.memmap(path, dtype=dtype, mode="r"), meta
