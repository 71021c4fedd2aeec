"""Speculative decoding inside the batched engine: proposals per request, verified in the engine's own step.

    llm = LLM(model, chat, speculative=SpeculativeConfig(method="ngram", num_tokens=4))
    llm = LLM(model, chat, speculative=SpeculativeConfig(method="draft", num_tokens=4), draft_model=small)

One engine step with speculation (the rule itself, and why the output follows the target's distribution,
are in `speculative.py`):
1. propose  before scheduling, every running request in its decode phase (all of its tokens but the last
            computed) whose sampling allows it gets up to k proposals from its own proposer session (prompt
            lookup, or a draft model with its own KV cache); they are appended to its tokens provisionally,
            so the scheduler feeds 1 + n tokens for it, as a chunk of a prefill, and reserves their blocks.
2. trim     after scheduling: a request fed fewer tokens than that (token budget) keeps only the proposals
            that were fed; one not scheduled (or preempted) drops them all.
3. score    the model runner returns the logits of every fed position of a speculating row (n + 1 rows).
4. verify   per request, with its own params and generator (`speculative.verify` / `verify_greedy`), so a
            request's result does not depend on the others in the batch: a accepted proposals plus one
            emitted token go through the engine's usual per-token stop checks and streaming; logprobs are
            the raw log-softmax of the verification rows, as the plain engine's.
5. roll back the request's computed count becomes its accepted length and the blocks wholly past its tokens
            go back to the pool; stale keys of rejected proposals in the last block are past the context
            length (never attended) and are overwritten by the next tokens. Blocks enter the prefix cache
            only once full of computed, accepted tokens (the block manager's rule).

Requests with repetition / presence / frequency penalties decode without speculation (their distribution
changes with every accepted token inside a round). Models with a recurrent layer (linear attention, S4D)
cannot forget rejected tokens: the engine refuses speculation for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from scratchlm.errors import InvalidArgument
from scratchlm.infer.speculative import DraftModel, NGramProposer, processed_probs, verify, verify_greedy

METHODS = ("ngram", "draft")


@dataclass
class SpeculativeConfig:
    method: str = "ngram"  # "ngram" (prompt lookup, no model) | "draft" (a small model of the same vocabulary)
    num_tokens: int = 4  # k: proposals per request and step
    ngram_max: int = 3  # prompt lookup: longest suffix n-gram searched
    ngram_min: int = 1

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InvalidArgument(f"speculative method {self.method!r}: expected one of {', '.join(METHODS)}")
        if isinstance(self.num_tokens, bool) or not isinstance(self.num_tokens, int) or self.num_tokens < 1:
            raise InvalidArgument(f"speculative num_tokens must be an integer >= 1, got {self.num_tokens!r}")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise InvalidArgument(f"speculative ngram sizes need 1 <= ngram_min <= ngram_max, got {self.ngram_min}")


@dataclass
class _Pending:
    base: int  # len(seq.token_ids) before the proposals
    proposals: list[int]
    q: Tensor | None  # (n, V) proposer probabilities, None for deterministic proposals


@dataclass
class Speculator:
    config: SpeculativeConfig
    max_model_len: int
    draft_model: object = None
    sessions: dict = field(default_factory=dict)  # seq_id -> proposer session
    pending: dict = field(default_factory=dict)  # seq_id -> _Pending

    def __post_init__(self):
        cfg = self.config
        cfg.validate()
        if cfg.method == "draft":
            if self.draft_model is None:
                raise InvalidArgument("speculative method 'draft' needs a draft_model")
            self.draft_model.eval()
            self.proposer = DraftModel(self.draft_model)
        else:
            self.proposer = NGramProposer(cfg.ngram_max, cfg.ngram_min)

    def check_target(self, model, has_state_layers: bool) -> None:
        if has_state_layers:
            raise InvalidArgument(
                "speculative decoding needs every layer to cache per-token keys; this model has recurrent layers"
                " (linear attention / S4D) whose state cannot forget rejected proposals"
            )
        if self.draft_model is not None:
            if self.draft_model.config.vocab_size != model.config.vocab_size:
                raise InvalidArgument(
                    f"the draft's vocabulary ({self.draft_model.config.vocab_size} ids) differs from the target's"
                    f" ({model.config.vocab_size}): the draft must use the target's tokenizer"
                )
            if next(self.draft_model.parameters()).device != next(model.parameters()).device:
                raise InvalidArgument("the draft and the target must be on the same device")

    # ------------------------------------------------------------------ 1. propose
    def propose(self, seq, params, generator, emitted: int) -> None:
        """Append up to k proposals to a decoding sequence (recorded in self.pending)."""
        if params.needs_history:
            return
        room = self.config.num_tokens
        if params.max_tokens is not None:
            room = min(room, params.max_tokens - emitted - 1)  # the round's own token comes after them
        room = min(room, self.max_model_len - len(seq.token_ids) - 1)
        if room < 1:
            return
        session = self.sessions.get(seq.seq_id)
        if session is None:
            session = self.sessions[seq.seq_id] = self.proposer.start(
                seq.prompt_token_ids, self.max_model_len, params, generator
            )
        with torch.no_grad():
            proposals, q = session.propose(seq.token_ids, room)
        proposals = [int(x) for x in proposals][:room]
        if proposals:
            self.pending[seq.seq_id] = _Pending(len(seq.token_ids), proposals, q)
            seq.token_ids.extend(proposals)

    # ------------------------------------------------------------------ 2. trim to what was scheduled
    def trim(self, seqs_by_id: dict, fed: dict[int, int]) -> None:
        """fed: seq_id -> tokens the step feeds. Keep the proposals that were fed, drop the rest."""
        for sid in list(self.pending):
            seq, p = seqs_by_id[sid], self.pending[sid]
            keep = fed[sid] - 1 if sid in fed and seq.num_computed_tokens == p.base - 1 else 0
            keep = max(0, min(keep, len(p.proposals)))
            del seq.token_ids[p.base + keep :]
            if keep == 0:
                del self.pending[sid]
            else:
                p.proposals, p.q = p.proposals[:keep], (p.q[:keep] if p.q is not None else None)

    def num_logits(self, seq_id: int) -> int:
        p = self.pending.get(seq_id)
        return 1 if p is None else len(p.proposals) + 1

    # ------------------------------------------------------------------ 4. verify
    def verify(self, seq, logits: Tensor, params, generator) -> tuple[list[int], int]:
        """logits (n+1, V) of the fed positions. Removes the proposals from seq.token_ids and returns
        (the tokens to emit: accepted proposals + one, the number accepted)."""
        p = self.pending.pop(seq.seq_id)
        if params.greedy:
            a, token = verify_greedy(logits, p.proposals)
        else:
            probs = torch.stack([processed_probs(row, params) for row in logits])  # (n+1, V)
            a, token = verify(probs, p.proposals, p.q, generator)
        del seq.token_ids[p.base :]
        return p.proposals[:a] + [token], a

    def drop(self, seq) -> None:
        """Take a sequence's pending proposals off its tokens (it is being preempted)."""
        p = self.pending.pop(seq.seq_id, None)
        if p is not None:
            del seq.token_ids[p.base :]

    def forget(self, seq_id: int) -> None:
        self.sessions.pop(seq_id, None)
        self.pending.pop(seq_id, None)
