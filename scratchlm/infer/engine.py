"""The inference engine: many requests at once over a paged KV cache (vLLM's shape, in readable code).

    llm = LLM(model, chat)                                        # or LLM.from_model("smollm2-135m-instruct")
    outs = llm.generate(["Once upon a time", "The capital of"], SamplingParams(temperature=0, max_tokens=32))

    engine = Engine(model, chat)                                  # the step API a server drives
    rid = engine.add_request("Hello", SamplingParams(max_tokens=20))
    while engine.has_unfinished():
        for delta in engine.step():                               # new tokens and text of each request
            print(delta.request_id, delta.text, end="")
    engine.abort(rid)

One step = schedule (`scheduler.py`: running sequences first, then waiting ones, under a token and a
sequence budget, chunked prefill, preemption when blocks run out) -> one forward of the model over
the paged cache (`model_runner.py`) -> sample the sequences that reached the end of their tokens
(`sampling.py`: per-request generators, so a request's tokens do not depend on its batch) -> stop
checks (EOS, stop ids, stop strings that are not emitted, max_tokens, the model's context) ->
finished sequences free their blocks (full ones stay in the prefix cache until evicted).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from scratchlm.errors import InvalidArgument, ScratchLMError
from scratchlm.infer.block_manager import BlockManager
from scratchlm.infer.model_runner import ModelRunner
from scratchlm.infer.paged_cache import bytes_per_block
from scratchlm.infer.sampling import SamplingParams, TokenHistory, make_generator, sample
from scratchlm.infer.scheduler import Scheduler
from scratchlm.infer.sequence import Sequence
from scratchlm.infer.spec_decode import SpeculativeConfig, Speculator
from scratchlm.tokenizer.stream import StreamDecoder


@dataclass
class EngineConfig:
    block_size: int = 16  # tokens per KV block
    num_blocks: int = 0  # KV blocks in the pool; 0 = what `kv_cache_mb` holds
    kv_cache_mb: int = 256  # pool size when num_blocks = 0
    max_num_seqs: int = 64  # sequences per step
    max_num_batched_tokens: int = 2048  # tokens per step (prefill chunks + decodes)
    enable_prefix_caching: bool = True
    max_model_len: int = 0  # longest prompt + output; 0 = the model's context_length
    speculative: SpeculativeConfig | None = None  # proposals verified per request (spec_decode.py); None = off

    def validate(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"engine {name} must be >= 1, got {getattr(self, name)}")
        if self.num_blocks < 0 or self.kv_cache_mb < 1 or self.max_model_len < 0:
            raise InvalidArgument("engine num_blocks and max_model_len must be >= 0, kv_cache_mb >= 1")


@dataclass
class Completion:
    """One sample of a request (n per request)."""

    index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" (EOS, a stop id or string) | "length" | "abort"
    logprobs: list[float] = field(default_factory=list)  # raw-model logprob of each generated token
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # with params.logprobs = n


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[Completion]
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache (OpenAI's usage.cached_tokens)

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.outputs)


@dataclass
class Delta:
    """What one step added to one sample: for streaming."""

    request_id: str
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None


class _Sample:
    """Engine-side state of one sequence: its generator, output text and stop-string bookkeeping."""

    def __init__(self, req: _Request, index: int, seq: Sequence, vocab_size: int, device, tokenizer):
        self.req, self.index, self.seq = req, index, seq
        self.completion = Completion(index)
        params = req.params
        self.generator = None if params.greedy else make_generator(params, device, index)
        self.history = TokenHistory(req.prompt_ids, vocab_size, device) if params.needs_history else None
        self.emitted = 0  # characters of completion.text already streamed
        # the output's text so far, complete characters only (a token may end inside a UTF-8 character)
        self.decoder = StreamDecoder(tokenizer) if tokenizer is not None else None
        self.text = ""


@dataclass
class _Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    samples: list[_Sample] = field(default_factory=list)


class Engine:
    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None, draft_model=None):
        self.config = config = config or EngineConfig()
        config.validate()
        self.model, self.tokenizer = model.eval(), tokenizer
        cfg = model.config
        self.max_model_len = min(config.max_model_len or cfg.context_length, cfg.context_length)
        num_blocks = config.num_blocks or self._blocks_for(config.kv_cache_mb)
        self.runner = ModelRunner(model, num_blocks, config.block_size, config.max_num_seqs)
        # a prefix hit skips computing its tokens, but a recurrent state (runner.slots) cannot be read from blocks
        prefix_caching = config.enable_prefix_caching and self.runner.slots is None
        self.blocks = BlockManager(num_blocks, config.block_size, prefix_caching)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens, self.runner.slots)
        # a model whose every layer slides can give back the blocks no query will see again
        self._window = cfg.window if {cfg.layer_kind(i) for i in range(cfg.n_layers)} == {"S"} else 0
        self.requests: dict[str, _Request] = {}
        self._by_seq: dict[int, _Sample] = {}
        self._ids = itertools.count()
        self.stats = {"steps": 0, "preemptions": 0, "prefill_tokens": 0, "decode_tokens": 0}
        self.spec = None
        if config.speculative is not None:
            self.spec = Speculator(config.speculative, self.max_model_len, draft_model)
            self.spec.check_target(model, self.runner.slots is not None)
            self.stats |= {"spec_proposed": 0, "spec_accepted": 0}
            self.scheduler.on_preempt = self.spec.drop  # a preempted sequence is recomputed without proposals
        elif draft_model is not None:
            raise InvalidArgument("a draft_model is given but speculative decoding is off (EngineConfig.speculative)")
        self._eos = set(tokenizer.stop_ids) if tokenizer is not None and hasattr(tokenizer, "stop_ids") else set()

    def _blocks_for(self, mb: int) -> int:
        per_block = bytes_per_block(self.model, self.config.block_size)
        if per_block == 0:  # recurrent layers only: blocks are bookkeeping, enough for every sequence at full length
            return self.config.max_num_seqs * -(-self.max_model_len // self.config.block_size)
        return max(1, mb * 2**20 // per_block)

    # ------------------------------------------------------------------ requests
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None, request_id=None) -> str:
        params = params or SamplingParams()
        params.validate()
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidArgument("a text prompt needs the engine's tokenizer; pass token ids")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise InvalidArgument("the prompt must hold at least one token")
        vocab = self.model.config.vocab_size
        if not all(0 <= t < vocab for t in ids):
            raise InvalidArgument(f"prompt token ids must be in [0, {vocab})")
        if len(ids) >= self.max_model_len:
            raise InvalidArgument(
                f"the prompt has {len(ids)} tokens; this model takes at most {self.max_model_len - 1}"
            )
        rid = str(request_id) if request_id is not None else f"req-{next(self._ids)}"
        if rid in self.requests:
            raise InvalidArgument(f"request id {rid!r} is already in use")
        req = _Request(rid, ids, params)
        for i in range(params.n):
            seq = Sequence(list(ids), params)
            sample_state = _Sample(req, i, seq, self.model.config.vocab_size, self.runner.device, self.tokenizer)
            req.samples.append(sample_state)
            self._by_seq[seq.seq_id] = sample_state
            self.scheduler.add(seq)
        self.requests[rid] = req
        return rid

    def abort(self, request_id: str) -> None:
        req = self.requests.get(request_id)
        if req is None:
            return
        for s in req.samples:
            if s.completion.finish_reason is None:
                s.completion.finish_reason = "abort"
                self.scheduler.finish(s.seq)
                if self.spec is not None:
                    self.spec.forget(s.seq.seq_id)
                self._by_seq.pop(s.seq.seq_id, None)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def reset_prefix_cache(self) -> int:
        """Drop the prefix cache after the model's weights changed in place (its cached KV is stale); no
        request may be running. Returns the number of blocks forgotten."""
        if self.has_unfinished():
            raise InvalidArgument("reset_prefix_cache while requests run: finish or abort them first")
        return self.blocks.reset_prefix_cache()

    def output(self, request_id: str) -> RequestOutput:
        req = self.requests[request_id]
        # the prompt is computed once for all n samples (the later ones share its blocks): sample 0, admitted
        # first, tells whether the prompt came from the cache
        cached = max(req.samples[0].seq.num_prompt_cached_tokens, 0)
        return RequestOutput(request_id, req.prompt_ids, [s.completion for s in req.samples], cached)

    def release(self, request_id: str) -> RequestOutput:
        """The request's output, forgetting it (a server calls this once a request is done)."""
        out = self.output(request_id)
        if out.finished:
            del self.requests[request_id]
        return out

    # ------------------------------------------------------------------ one step
    def step(self) -> list[Delta]:
        if self.spec is not None:
            self._propose()
        plan = self.scheduler.schedule()
        if self.spec is not None:
            self._trim(plan)
        if not plan.batch:
            if self.scheduler.has_unfinished():
                raise ScratchLMError("the scheduler could not place any request (KV pool too small?)")
            return []
        spec_ids = self.spec.pending if self.spec is not None else {}
        counts = [self.spec.num_logits(seq.seq_id) for seq, _ in plan.batch] if spec_ids else None
        logits = self.runner.run(plan.batch, counts)  # (sum(counts), V)
        self.stats["steps"] += 1
        self.stats["preemptions"] += len(plan.preempted)
        for seq, n in plan.batch:
            self.stats["decode_tokens" if seq.num_output_tokens and n == 1 else "prefill_tokens"] += n
        starts = [0]
        for c in counts or [1] * len(plan.batch):
            starts.append(starts[-1] + c)
        rows = [i for i in range(len(plan.batch)) if plan.samples(i) and plan.batch[i][0].seq_id not in spec_ids]
        spec_rows = [i for i in range(len(plan.batch)) if plan.batch[i][0].seq_id in spec_ids]
        for seq, n in plan.batch:
            seq.num_computed_tokens += n
            if self._window and seq.seq_id not in spec_ids:
                self.blocks.release_outside_window(seq, self._window)
        deltas = [self._verify(plan.batch[i][0], logits[starts[i] : starts[i + 1]]) for i in spec_rows]
        if not rows:
            return deltas
        states = [self._by_seq[plan.batch[i][0].seq_id] for i in rows]
        picked = sample(
            logits if len(rows) == len(logits) else logits[[starts[i] for i in rows]],  # (len(rows), V)
            [s.req.params for s in states],
            [s.generator for s in states],
            [s.history for s in states],
        )
        tokens, logprobs = picked.tokens.tolist(), picked.logprobs.tolist()
        tops = [
            None if ids is None else list(zip(ids.tolist(), lps.tolist()))
            for ids, lps in zip(picked.top_ids, picked.top_logprobs)
        ]
        deltas += [self._accept(state, tokens[r], logprobs[r], tops[r]) for r, state in enumerate(states)]
        return deltas

    # ------------------------------------------------------------------ speculation (spec_decode.py)
    def _propose(self) -> None:
        for seq in self.scheduler.running:
            if seq.num_computed_tokens == len(seq.token_ids) - 1 and seq.num_output_tokens > 0:
                state = self._by_seq[seq.seq_id]
                self.spec.propose(seq, state.req.params, state.generator, len(state.completion.token_ids))

    def _trim(self, plan) -> None:
        pending = {sid: self._by_seq[sid].seq for sid in self.spec.pending}
        self.spec.trim(pending, {seq.seq_id: n for seq, n in plan.batch})
        for seq in pending.values():
            if seq.block_table:
                self.blocks.truncate(seq)  # blocks reserved for proposals that are not fed

    def _verify(self, seq: Sequence, logits) -> Delta:
        """One speculating sequence after the forward: logits (n+1, V) of its fed positions."""
        state = self._by_seq[seq.seq_id]
        params = state.req.params
        base = len(seq.token_ids) - len(self.spec.pending[seq.seq_id].proposals)
        emit, accepted = self.spec.verify(seq, logits, params, state.generator)
        self.stats["spec_proposed"] += len(logits) - 1
        self.stats["spec_accepted"] += accepted
        seq.num_computed_tokens = base + accepted  # the keys of rejected proposals are past the context: stale
        logp = torch.log_softmax(logits, dim=-1)  # (n+1, V) raw model logprobs, as the plain engine reports
        top = None
        if params.logprobs:
            top_lp, top_ids = logp.topk(min(params.logprobs, logp.shape[-1]), dim=-1)
        merged = Delta(state.req.request_id, state.index, [], "", None)
        for i, token in enumerate(emit):
            if params.logprobs is not None:
                top = list(zip(top_ids[i].tolist(), top_lp[i].tolist())) if params.logprobs else []
            d = self._accept(state, token, float(logp[i, token]), top)
            merged.token_ids += d.token_ids
            merged.text += d.text
            merged.finish_reason = d.finish_reason
            if d.finish_reason is not None:
                return merged
        self.blocks.truncate(seq)  # blocks past the accepted tokens go back to the pool
        if self._window:
            self.blocks.release_outside_window(seq, self._window)
        return merged

    def _accept(self, state: _Sample, token: int, logprob: float, top: list | None) -> Delta:
        seq, params, c = state.seq, state.req.params, state.completion
        seq.token_ids.append(token)
        c.token_ids.append(token)
        c.logprobs.append(logprob)
        if state.history is not None:
            state.history.append(token)
        if top is not None:
            c.top_logprobs.append(top)
        reason = None
        if (token in self._eos and not params.ignore_eos) or token in params.stop_token_ids:
            reason = "stop"
        elif (params.max_tokens is not None and len(c.token_ids) >= params.max_tokens) or len(
            seq.token_ids
        ) >= self.max_model_len:
            reason = "length"
        if state.decoder is not None:
            state.text += state.decoder.push(token) + (state.decoder.flush() if reason is not None else "")
        text = state.text
        if params.stop:
            hit = min(((text.find(s), s) for s in params.stop if s in text), default=None)
            if hit is not None:
                text, reason = text[: hit[0]], "stop"
        c.text = text
        # stream what cannot become the start of a stop string any more
        hold = 0 if reason else _stop_prefix_len(text, params.stop)
        new_text = text[state.emitted : len(text) - hold] if len(text) - hold > state.emitted else ""
        state.emitted += len(new_text)
        if reason is not None:
            c.finish_reason = reason
            self.scheduler.finish(seq)
            self._by_seq.pop(seq.seq_id, None)
            if self.spec is not None:
                self.spec.forget(seq.seq_id)
        return Delta(state.req.request_id, state.index, [token], new_text, reason)


def _stop_prefix_len(text: str, stops) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string (held back from streams)."""
    best = 0
    for s in stops or ():
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class LLM:
    """Offline batches: `generate(prompts, params)` runs the engine until every request is done."""

    def __init__(self, model, tokenizer=None, draft_model=None, **config):
        self.engine = Engine(model, tokenizer, EngineConfig(**config), draft_model)

    @classmethod
    def from_model(cls, spec: str, **config) -> LLM:
        """A run directory, a native model directory, a .gguf file or a pretrained name."""
        from scratchlm.model.model_dir import load_model

        model, chat = load_model(spec)
        return cls(model, chat, **config)

    def generate(
        self, prompts: list[str | list[int]] | str, params: SamplingParams | list[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(plist) != len(prompts):
            raise InvalidArgument(f"{len(prompts)} prompts but {len(plist)} sampling params")
        ids = [self.engine.add_request(p, sp) for p, sp in zip(prompts, plist)]
        while self.engine.has_unfinished():
            self.engine.step()
        return [self.engine.release(i) for i in ids]
