"""Training and evaluation batches from a memory-mapped token file.

    data = TokenData("data/train.bin", expect_tokenizer_hash=tok.hash)
    data = TokenData(ids, vocab_size=tok.vocab_size)   # or ids made in Python: numpy array / torch tensor
    data.check_vocab(model.config.vocab_size)
    loader = RandomWindows(data, batch_size=16, seq_len=256, seed=0, rank=rank, world_size=world)
    x, y = loader.batch(step)          # (B, T) int64 each; y is x shifted by one token
    for x, y in eval_windows(valid, batch_size=16, seq_len=256):
        ...                             # every target token of the file exactly once; -100 = padding

The token file is never read into RAM: a batch copies only its windows out of the memory map.
In-memory ids are used as they are (no copy of a 1-D integer array), checked once against the vocabulary.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.tokenizer.token_file import TOKENS_FORMAT, TOKENS_VERSION, as_id_array, open_tokens

IGNORE_INDEX = -100  # target value skipped by the loss (torch cross_entropy's default ignore_index)


class TokenData:
    """A token file (memory-mapped) and its sidecar metadata, or token ids already in memory.

    `TokenData(path)` opens a file written by `scratchlm tokenizer encode` or `write_token_file`.
    `TokenData(ids, vocab_size=V)` takes a 1-D numpy array, torch tensor or list of ids, every one checked
    to be in [0, V); `tokenizer_hash` (checked against `expect_tokenizer_hash`, like a file's) and
    `bytes_per_token` (for bits per byte) stand in for what a file's sidecar would say.
    """

    def __init__(
        self,
        path,
        expect_tokenizer_hash: str | None = None,
        *,
        vocab_size: int | None = None,
        tokenizer_hash: str | None = None,
        bytes_per_token: float | None = None,
    ):
        if isinstance(path, (str, os.PathLike)):
            if vocab_size is not None or tokenizer_hash is not None or bytes_per_token is not None:
                raise ScratchLMError(
                    "vocab_size, tokenizer_hash and bytes_per_token are for in-memory ids: a token file's "
                    "sidecar states them"
                )
            self.path = Path(path)
            self.name = str(self.path)
            self.tokens, self.meta = open_tokens(self.path, expect_tokenizer_hash)  # np.memmap, dict
            return
        if vocab_size is None:
            raise ScratchLMError("in-memory token ids need vocab_size= (the tokenizer's vocabulary size)")
        if bytes_per_token is not None and not (isinstance(bytes_per_token, (int, float)) and bytes_per_token > 0):
            raise ScratchLMError(f"bytes_per_token must be > 0, got {bytes_per_token!r}")
        if expect_tokenizer_hash is not None and tokenizer_hash != expect_tokenizer_hash:
            raise ScratchLMError(
                f"these in-memory ids were made by another tokenizer (hash {(tokenizer_hash or '?')[:12]})"
            )
        self.path = None
        self.name = "in-memory token data"
        self.tokens = as_id_array(path, vocab_size, "the token ids")  # (N,) any integer dtype, not copied
        self.meta = {
            "format": TOKENS_FORMAT,
            "version": TOKENS_VERSION,
            "dtype": self.tokens.dtype.name,
            "count": int(self.tokens.size),
            "vocab_size": int(vocab_size),
            "tokenizer_hash": tokenizer_hash,
            "bytes_per_token": bytes_per_token,
        }

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of the tokenizer that wrote the file: every id is < this."""
        v = self.meta.get("vocab_size")
        if not isinstance(v, int) or v < 1:
            raise ScratchLMError(f"{self.name}: its sidecar has no valid vocab_size (re-encode the corpus)")
        return v

    @property
    def tokenizer_hash(self) -> str | None:
        return self.meta.get("tokenizer_hash")

    @property
    def bytes_per_token(self) -> float:
        """Source bytes per token of the encoded corpus (for bits per byte)."""
        b = self.meta.get("bytes_per_token")
        if not isinstance(b, (int, float)) or b <= 0:
            raise ScratchLMError(f"{self.name}: no bytes_per_token (needed for bits per byte) in its sidecar")
        return float(b)

    def max_id(self, chunk: int = 1 << 24) -> int:
        """The largest id in the file: a vectorised max over the memmap, `chunk` tokens at a time (about
        0.5 s per GB of uint16 tokens), so memory stays bounded whatever the file size."""
        top = -1
        for i in range(0, len(self.tokens), chunk):
            top = max(top, int(self.tokens[i : i + chunk].max()))
        return top

    def check_vocab(self, model_vocab_size: int) -> None:
        """Error unless every id in the file fits the model's embedding table: first the sidecar's
        vocab_size (a model vocab larger than the tokenizer's, padded to a multiple of 64, say, is fine),
        then the ids themselves (a damaged or foreign file would otherwise crash training mid-run)."""
        if self.vocab_size > model_vocab_size:
            raise ScratchLMError(
                f"{self.name} holds ids of a {self.vocab_size}-token vocabulary but the model has "
                f"vocab_size {model_vocab_size}: set model.vocab_size >= {self.vocab_size}"
            )
        top = self.max_id()
        if top >= self.vocab_size:
            raise ScratchLMError(
                f"{self.name} holds id {top}, outside the {self.vocab_size}-token vocabulary its sidecar states: "
                "the file is damaged or was not written by this tokenizer (re-encode the corpus)"
            )


class RandomWindows:
    """Batches of random windows; batch `i` is a pure function of (seed, i, global batch, rank).

    Batch i of the whole job is `world_size * batch_size` windows of `seq_len + 1` tokens whose
    start offsets are drawn (uniformly, with replacement) by `np.random.default_rng([seed, i])`;
    rank r takes rows [r * batch_size, (r + 1) * batch_size). So:
      - any batch is reproducible without replaying the stream (resume = set `next_index`);
      - ranks get different windows;
      - the windows depend on the global batch size only, not on how it is split: W ranks of B
        rows see exactly the windows one process of W * B rows sees (DDP == single process).
    Windows may cross document separators, as in GPT-2 / nanoGPT training.
    """

    def __init__(self, data: TokenData, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1 or seq_len < 1:
            raise ScratchLMError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise ScratchLMError(f"rank {rank} is outside world_size {world_size}")
        if seed < 0:
            raise ScratchLMError(f"the data seed must be >= 0, got {seed}")
        if len(data) < seq_len + 1:
            raise ScratchLMError(
                f"batch larger than the data: {data.name} has {len(data)} tokens but one window needs "
                f"seq_len + 1 = {seq_len + 1}; use a shorter seq_len or a bigger token file"
            )
        self.data = data
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.next_index = 0

    def starts(self, i: int) -> np.ndarray:
        """Start offsets of this rank's windows in batch i, shape (B,)."""
        if i < 0:
            raise ValueError(f"batch index must be >= 0, got {i}")
        rng = np.random.default_rng([self.seed, i])
        high = len(self.data) - self.seq_len  # last valid start is len - (seq_len + 1)
        all_starts = rng.integers(0, high, size=self.world_size * self.batch_size)
        return all_starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), both (B, T) int64 on the CPU: y[b, t] is the token after x[b, t]."""
        n = self.seq_len + 1
        tokens = self.data.tokens
        w = np.stack([tokens[s : s + n] for s in self.starts(i)]).astype(np.int64)  # (B, T+1)
        w = torch.from_numpy(w)
        return w[:, :-1], w[:, 1:]

    def __iter__(self) -> RandomWindows:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.batch(self.next_index)
        self.next_index += 1
        return out

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `next_index`, then advance: same as `next(loader)`."""
        return next(self)

    def state_dict(self) -> dict:
        """The next batch index, plus what defines the stream (checked on load)."""
        return {
            "next_index": self.next_index,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch": self.world_size * self.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        diff = [
            f"{k} {state[k]} -> {mine[k]}"
            for k in ("seed", "seq_len", "global_batch")
            if k in state and state[k] != mine[k]
        ]
        if diff:
            raise ScratchLMError(f"cannot resume the data stream: it was saved with other settings ({', '.join(diff)})")
        self.next_index = int(state["next_index"])


def split_for_rank(n: int, rank: int, world_size: int) -> range:
    """The contiguous share of items 0..n-1 that `rank` of `world_size` takes (sizes differ by <= 1)."""
    if not 0 <= rank < world_size:
        raise ScratchLMError(f"rank {rank} is outside world_size {world_size}")
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return range(lo, lo + base + (rank < extra))


def eval_windows(
    data: TokenData, batch_size: int, seq_len: int, max_tokens: int = 0, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping windows over the file, as (x, y) batches of (<= B, T) int64.

    Window k has inputs tokens[kT : kT + T] and targets tokens[kT + 1 : kT + T + 1], so every token
    but the first is a target exactly once. The last window is padded to T: x with 0, y with
    IGNORE_INDEX (-100), so every batch has T columns; the last batch may have fewer rows. With
    `max_tokens` > 0 only the first `max_tokens` targets are used. With `world_size` > 1 each
    rank takes a contiguous share of the windows (`split_for_rank`): summing the loss over ranks
    gives exactly the single-process result. Deterministic; reads the file window by window.
    """
    if batch_size < 1 or seq_len < 1:
        raise ScratchLMError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    n_targets = len(data) - 1
    if max_tokens > 0:
        n_targets = min(n_targets, max_tokens)
    if n_targets < 1:
        raise ScratchLMError(f"{data.name} has {len(data)} tokens: evaluation needs at least 2")
    windows = split_for_rank(math.ceil(n_targets / seq_len), rank, world_size)
    return _eval_batches(data.tokens, n_targets, windows, batch_size, seq_len)  # checks above run eagerly


def _eval_batches(
    tokens: np.ndarray, n_targets: int, windows: range, batch_size: int, seq_len: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for b in range(windows.start, windows.stop, batch_size):
        ks = range(b, min(b + batch_size, windows.stop))
        x = torch.zeros(len(ks), seq_len, dtype=torch.int64)  # (B, T)
        y = torch.full((len(ks), seq_len), IGNORE_INDEX, dtype=torch.int64)  # (B, T)
        for row, k in enumerate(ks):
            s = k * seq_len
            t = min(seq_len, n_targets - s)  # targets in this window
            w = torch.from_numpy(tokens[s : s + t + 1].astype(np.int64))
            x[row, :t] = w[:-1]
            y[row, :t] = w[1:]
        yield x, y


def count_targets(data: TokenData, max_tokens: int = 0) -> int:
    """How many target tokens `eval_windows(data, ..., max_tokens)` yields over all ranks."""
    n = max(len(data) - 1, 0)
    return min(n, max_tokens) if max_tokens > 0 else n


def bits_per_byte(total_nll_nats: float, n_tokens: int, bytes_per_token: float) -> float:
    """Bits per byte of the source text: (nats per token / ln 2) / (bytes per token).

    Independent of the tokenizer, so models with different vocabularies compare on it. The
    bytes per token is the corpus average from the token file's sidecar (source bytes / count).
    """
    if n_tokens <= 0 or bytes_per_token <= 0:
        raise ScratchLMError(
            f"bits per byte needs n_tokens > 0 and bytes_per_token > 0, got {n_tokens}, {bytes_per_token}"
        )
    return total_nll_nats / n_tokens / math.log(2) / bytes_per_token
