"""Log-likelihood of continuations given contexts: the scoring core of every multiple-choice task.

    scorer = Scorer(model, chat, batch_size=8)
    scorer.loglikelihood([("Question ... Answer:", " A"), ...])  # -> [(sum log p, is_greedy), ...]

Tokenization (the rule lm-evaluation-harness uses, so per-example figures agree with it):
- trailing whitespace of the context moves to the front of the continuation ("Answer: " + "A" is scored
  as "Answer:" + " A"), so the space is part of the continuation's first token as BPE tokenizers want;
- the pair is encoded whole, `encode(context + continuation)`, and split at `len(encode(context))`, so
  the boundary tokens are the ones the model sees in running text (encoding the two parts apart would
  merge differently at the seam);
- special tokens follow the model's own rule (`chat.encode`: BOS only if the model's metadata adds one);
  an empty context is replaced by the start token (BOS, else end-of-text), as lm-eval's prefix token.

Scoring: sum over continuation tokens of log softmax(logits)[token], in float32, plus `is_greedy` (every
continuation token is the argmax). A sequence longer than the model's context is cut from the left
(`truncate="left"`, with one warning) or refused (`truncate="error"`). Requests are de-duplicated
(the same token sequence is scored once), sorted longest first, right-padded into batches (causal
attention never lets a real position see the padding after it), and requests whose model input is
identical share one forward pass (MMLU's four one-token answers cost one forward, not four). The head
is applied only at the continuation positions, so a large vocabulary never makes a (B, T, V) tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from scratchlm.errors import ScratchLMError
from scratchlm.eval.bpb import start_token

log = logging.getLogger(__name__)

TRUNCATE = ("left", "error")


def split_space(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the front of the continuation."""
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


class Scorer:
    """Scores (context, continuation) pairs with a scratchlm model (see the module docstring)."""

    def __init__(
        self,
        model,
        chat,
        batch_size: int = 8,
        max_length: int | None = None,
        truncate: str = "left",
        device: str | torch.device | None = None,
    ):
        if truncate not in TRUNCATE:
            raise ScratchLMError(f"truncate must be one of {', '.join(TRUNCATE)}, got {truncate!r}")
        if batch_size < 1:
            raise ScratchLMError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.chat = model.eval(), chat
        self.batch_size, self.truncate = batch_size, truncate
        self.max_length = min(max_length or model.config.context_length, model.config.context_length)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.start = start_token(chat)
        self.cache: dict[tuple, tuple[float, bool]] = {}
        self.truncated = 0
        self.forwards = 0

    # ------------------------------------------------------------------ tokens
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if not context:
            return [self.start], self.chat.encode(continuation, add_special=False)
        context, continuation = split_space(context, continuation)
        whole = self.chat.encode(context + continuation)
        ctx = self.chat.encode(context)
        return ctx, whole[len(ctx) :]

    def loglikelihood(self, pairs: Iterable[tuple[str, str]], progress: Callable[[int], None] | None = None):
        """[(context, continuation)] -> [(sum of log-probabilities, is_greedy)], in order."""
        return self.score_tokens([self.encode_pair(c, x) for c, x in pairs], progress)

    # ------------------------------------------------------------------ scoring
    def _fit(self, ctx: list[int], cont: list[int]) -> tuple[list[int], int]:
        """The model input for (ctx, cont) and the number of continuation tokens, cut to max_length."""
        if not cont:
            raise ScratchLMError("a continuation encodes to no tokens")
        full = ctx + cont
        inp = full[:-1]
        if len(inp) > self.max_length:
            if self.truncate == "error" or len(cont) > self.max_length:
                raise ScratchLMError(
                    f"a request of {len(full)} tokens does not fit the model's context of {self.max_length} "
                    f"(continuation {len(cont)} tokens); use truncate='left' or fewer few-shot examples"
                )
            if not self.truncated:
                log.warning("requests longer than the context (%d tokens) are cut from the left", self.max_length)
            self.truncated += 1
            inp = inp[-self.max_length :]
        return inp, len(cont)

    @torch.no_grad()
    def score_tokens(self, requests: list[tuple[list[int], list[int]]], progress=None):
        keys = [(tuple(c), tuple(x)) for c, x in requests]
        todo = sorted({k for k in keys if k not in self.cache}, key=lambda k: -(len(k[0]) + len(k[1])))
        # requests with the same model input share a forward pass
        groups: dict[tuple, list[tuple]] = {}
        for k in todo:
            inp, _ = self._fit(list(k[0]), list(k[1]))
            groups.setdefault(tuple(inp), []).append(k)
        inputs = list(groups)
        for lo in range(0, len(inputs), self.batch_size):
            batch = inputs[lo : lo + self.batch_size]
            self._run(batch, groups)
            if progress is not None:
                progress(sum(len(groups[b]) for b in batch))
        return [self.cache[k] for k in keys]

    def _run(self, batch: list[tuple], groups: dict) -> None:
        T = max(len(b) for b in batch)
        x = torch.full((len(batch), T), self.start, dtype=torch.long)
        for i, b in enumerate(batch):
            x[i, : len(b)] = torch.tensor(b)
        h = self.model(x.to(self.device), output="hidden")  # (B, T, D)
        self.forwards += 1
        head = self.model.head
        for i, inp in enumerate(batch):
            for key in groups[inp]:
                cont = list(key[1])
                n = len(cont)
                pos = slice(len(inp) - n, len(inp))  # logits at these positions predict the continuation
                logits = head(h[i, pos]).float()  # (n, V)
                logp = F.log_softmax(logits, dim=-1)
                target = torch.tensor(cont, device=logp.device)
                total = logp.gather(1, target[:, None]).sum().item()
                greedy = bool((logits.argmax(-1) == target).all().item())
                self.cache[key] = (total, greedy)
