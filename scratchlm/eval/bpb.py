"""Bits per byte of a language model on raw text: tokenizer-independent, so models with different
vocabularies (a 4k BPE trained here, SmolLM2's 49k, Gemma's 262k) are compared on one scale.

    r = bits_per_byte(model, chat, text, context=1024)
    r["bits_per_byte"], r["nats_per_token"], r["tokens"], r["bytes"]

Definition: the text is cut into documents at `separator` (default "<|endoftext|>"; the separators
themselves are not scored). Each document is tokenized alone and scored in windows of at most
`context` tokens, each window preceded by the model's start token (BOS when the model adds one,
else its end-of-text token, the document boundary it was trained on) and not overlapping the
previous window, so every token of every document is predicted exactly once, with up to
`context - 1` tokens of its own document before it. bits/byte = sum of -log2 p(token) / UTF-8 bytes of
the documents.

With `stride` set (1 <= stride <= context), windows slide instead: each window predicts the next
`stride` tokens of the document and sees up to `context` real tokens before them (the start token
only at the document's beginning), so each token after the first window has at least
`context - stride` tokens of context. `stride=context` is lm-evaluation-harness's rolling
log-likelihood (its `word_perplexity`/`byte_perplexity`/`bits_per_byte`); a smaller stride costs
context/stride times the compute for a lower, better-conditioned figure.

The head is applied in chunks of positions, so a 262k vocabulary never materialises a (T, V) logit
matrix larger than `chunk` rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from scratchlm.errors import ScratchLMError

SEPARATOR = "<|endoftext|>"


def documents(text: str, separator: str | None = SEPARATOR) -> list[str]:
    docs = text.split(separator) if separator else [text]
    return [d for d in (d.strip("\n") for d in docs) if d]


def start_token(chat) -> int:
    """The token a document starts after: BOS if the model adds one, else end-of-text."""
    if chat.add_bos and chat.bos_id is not None:
        return chat.bos_id
    eot = getattr(chat.tokenizer, "end_of_text_id", None)
    start = eot if eot is not None else chat.eos_id
    if start is None:
        raise ScratchLMError("the tokenizer has neither a BOS nor an end-of-text token to start documents with")
    return start


@torch.no_grad()
def sum_nll(hidden_fn: Callable[[Tensor], Tensor], head: Tensor, ids: list[int], start: int, context: int, chunk: int):
    """Sum of -ln p over `ids` (one document) in non-overlapping windows of `context` tokens incl. `start`."""
    device = head.device
    total, span = 0.0, context - 1
    for lo in range(0, len(ids), span):
        piece = ids[lo : lo + span]
        x = torch.tensor([[start, *piece[:-1]]], device=device)  # (1, T): inputs
        y = torch.tensor(piece, device=device)  # (T,): targets
        h = hidden_fn(x)[0]  # (T, D)
        for c in range(0, len(piece), chunk):
            logits = (h[c : c + chunk] @ head.T).float()  # (chunk, V)
            total += F.cross_entropy(logits, y[c : c + chunk], reduction="sum").item()
    return total


@torch.no_grad()
def sliding_nll(hidden_fn, head: Tensor, ids: list[int], start: int, context: int, stride: int, chunk: int):
    """Sum of -ln p over `ids`: windows of up to `context` input tokens, each scoring `stride` new tokens."""
    device = head.device
    seq = [start, *ids]  # seq[t] for t >= 1 is predicted from seq[:t]
    total = 0.0
    for begin in range(1, len(seq), stride):
        end = min(begin + stride, len(seq))
        lo = max(0, end - 1 - context)
        x = torch.tensor([seq[lo : end - 1]], device=device)  # (1, <= context)
        y = torch.tensor(seq[begin:end], device=device)
        h = hidden_fn(x)[0, begin - 1 - lo :]  # the positions that predict seq[begin:end]
        for c in range(0, len(y), chunk):
            logits = (h[c : c + chunk] @ head.T).float()
            total += F.cross_entropy(logits, y[c : c + chunk], reduction="sum").item()
    return total


def bits_per_byte(
    model,
    chat,
    text: str,
    context: int = 1024,
    separator: str | None = SEPARATOR,
    chunk: int = 256,
    stride: int | None = None,
) -> dict:
    """Score `text` with a scratchlm model and its ChatTokenizer (see the module docstring)."""
    if context < 2:
        raise ScratchLMError(f"context must be >= 2, got {context}")
    context = min(context, model.config.context_length)
    if stride is not None and not 1 <= stride <= context:
        raise ScratchLMError(f"stride must be in [1, context={context}], got {stride}")
    model.eval()
    return score(lambda x: model(x, output="hidden"), model.head.weight, chat.tokenizer.encode, start_token(chat),
                 text, context, separator, chunk, stride)  # fmt: skip


def score(
    hidden_fn, head: Tensor, encode, start: int, text: str, context: int, separator, chunk: int, stride=None
) -> dict:
    """The tool-independent core: any model given as (hidden states function, head weight, encode)."""
    t0 = time.perf_counter()
    docs = documents(text, separator)
    if not docs:
        raise ScratchLMError("no text to score")
    nll, tokens, n_bytes = 0.0, 0, 0
    for doc in docs:
        ids = encode(doc)
        if stride is None:
            nll += sum_nll(hidden_fn, head, ids, start, context, chunk)
        else:
            nll += sliding_nll(hidden_fn, head, ids, start, context, stride, chunk)
        tokens += len(ids)
        n_bytes += len(doc.encode("utf-8"))
    return {
        "bits_per_byte": nll / math.log(2) / n_bytes,
        "nats_per_token": nll / tokens,
        "tokens": tokens,
        "bytes": n_bytes,
        "documents": len(docs),
        "context": context,
        "stride": stride,
        "seconds": time.perf_counter() - t0,
    }
