"""Token files: a flat array of token ids plus a JSON sidecar (`<file>.json`).

This is what `scratchlm tokenizer encode` writes and what training memory-maps. The sidecar
names the tokenizer (hash) so a model is never trained on ids of another vocabulary.

Ids made in Python become a token file with `write_token_file`:

    from scratchlm.tokenizer import write_token_file
    write_token_file(ids, "data/train.bin", tokenizer=tok)       # or tokenizer="tok/", or vocab_size=50_257
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_write, check_writable, read_json, sweep_stale_temps, write_json

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


def as_id_array(ids, vocab_size: int, what: str = "ids") -> np.ndarray:
    """`ids` (a numpy array, a torch tensor, or a sequence of ints) as a 1-D integer numpy array, without a
    copy where one is not needed, after checking that every id is in [0, vocab_size)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ScratchLMError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if hasattr(ids, "detach") and hasattr(ids, "numpy"):  # a torch tensor (torch is not imported for this)
        ids = ids.detach().cpu().numpy()
    try:
        arr = np.asarray(ids)
    except (OverflowError, ValueError, TypeError) as e:
        raise ScratchLMError(f"{what} are not an array of integers: {e}") from None
    if arr.ndim != 1:
        raise ScratchLMError(f"{what} must be one flat sequence of token ids, got an array of shape {arr.shape}")
    if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise ScratchLMError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.size == 0:
        return arr.astype(token_dtype(int(vocab_size)))  # np.asarray([]) is float64
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        at = int(np.flatnonzero(arr == bad)[0])
        raise ScratchLMError(f"{what} hold id {bad} (at position {at}), outside the vocabulary [0, {vocab_size})")
    return arr


def _tokenizer_facts(tokenizer, vocab_size: int | None) -> tuple[object | None, str | None, int]:
    """(tokenizer object or None, where it was loaded from, vocabulary size) from write_token_file's arguments."""
    source = None
    if isinstance(tokenizer, (str, Path)):
        from scratchlm.tokenizer.formats import load_tokenizer

        source = str(Path(tokenizer).resolve())
        tokenizer = load_tokenizer(tokenizer)
    if tokenizer is None:
        if vocab_size is None:
            raise ScratchLMError("write_token_file needs tokenizer= (a Tokenizer or its path) or vocab_size=")
        return None, None, vocab_size
    if not hasattr(tokenizer, "vocab_size") or not hasattr(tokenizer, "hash"):
        raise ScratchLMError(f"tokenizer must be a scratchlm Tokenizer or its path, got {type(tokenizer).__name__}")
    if vocab_size is not None and vocab_size != tokenizer.vocab_size:
        raise ScratchLMError(f"vocab_size={vocab_size} disagrees with the tokenizer's {tokenizer.vocab_size}")
    return tokenizer, source, tokenizer.vocab_size


def write_token_file(
    ids,
    path: str | Path,
    tokenizer=None,
    *,
    vocab_size: int | None = None,
    overwrite: bool = False,
    source: str | None = None,
    chunk: int = 1 << 22,
) -> dict:
    """Write `ids` (numpy array, torch tensor or list of ints) as the token file `path` + its sidecar, the
    same format `scratchlm tokenizer encode` writes, so training reads it. Returns the sidecar dict.

    `tokenizer` (a Tokenizer or the path of a saved one) fixes the vocabulary size and is recorded by its
    hash; the sidecar then also counts documents (end-of-text ids) and the source bytes (the length of the
    decoded ids), which bits per byte needs. With `vocab_size=` alone those are left empty. The id type
    follows the vocabulary (uint16 up to 65,536 ids, else uint32), every id is checked to be in range, and
    both files are written atomically (nothing half-written stays behind). `source` is an optional note of
    where the ids came from.
    """
    t0 = time.perf_counter()
    tok, tok_source, vocab_size = _tokenizer_facts(tokenizer, vocab_size)
    arr = as_id_array(ids, vocab_size)
    if chunk < 1:
        raise ScratchLMError(f"chunk must be >= 1 token, got {chunk}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise ScratchLMError(f"{path} already exists (pass overwrite=True to replace it)")
    check_writable(path, "token file", file=True)
    for stale in (path, sidecar_path(path)):
        sweep_stale_temps(stale)
    dtype = token_dtype(vocab_size)
    sep_id = tok.end_of_text_id if tok is not None else None
    docs = source_bytes = 0
    with atomic_write(path, "wb") as out:
        for i in range(0, arr.size, chunk):
            part = arr[i : i + chunk]
            out.write(part.astype(dtype, copy=False).tobytes())
            if sep_id is not None:
                docs += int(np.count_nonzero(part == sep_id))
            if tok is not None:
                source_bytes += len(tok.decode_bytes(part.tolist()))
        meta = {
            "format": TOKENS_FORMAT,
            "version": TOKENS_VERSION,
            "dtype": dtype.name,
            "count": int(arr.size),
            "vocab_size": int(vocab_size),
            "tokenizer_hash": tok.hash if tok is not None else None,
            "tokenizer": tok_source,
            "doc_separator": tok.end_of_text if tok is not None else None,
            "doc_separator_id": sep_id,
            "documents": docs if sep_id is not None else None,
            "source": source,
            "source_bytes": source_bytes if tok is not None else None,
            "invalid_utf8_bytes": None,
            "bytes_per_token": source_bytes / max(arr.size, 1) if tok is not None and source_bytes else None,
            "seconds": round(time.perf_counter() - t0, 3),
            "written_by": "write_token_file",
        }
        write_json(sidecar_path(path), meta)  # while the data file is still a temp file: both land or neither
    return meta
