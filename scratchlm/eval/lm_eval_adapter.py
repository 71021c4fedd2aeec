"""A scratchlm model as an lm-evaluation-harness `LM`, so every lm-eval task runs on scratchlm models.

    import lm_eval
    from scratchlm.eval.lm_eval_adapter import ScratchLM          # registers the model type "scratchlm"

    lm = ScratchLM(model="smollm2-135m-instruct", batch_size=8)   # anything load_model takes
    lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"], limit=100)

    # or from lm-eval's command line, after `import scratchlm.eval.lm_eval_adapter` in a wrapper script:
    #   --model scratchlm --model_args model=runs/quickstart,batch_size=8

The three request kinds map onto scratchlm's own code, not onto lm-eval's `TemplateLM` helpers, so the
harness checks scratchlm's implementation of lm-eval's rules rather than reusing them:

- `loglikelihood` -> `loglik.Scorer` (the context's trailing whitespace moves into the continuation, the
  pair is tokenized whole and split at the context's length, requests are de-duplicated and batched;
  an empty context is conditioned on the prefix token);
- `loglikelihood_rolling` -> `bpb.sliding_nll` with window = stride = `max_length`: the first window
  starts with the prefix token, later ones with the previous real token (lm-eval's disjoint rolling
  windows, what its `word_perplexity` / `byte_perplexity` / `bits_per_byte` use);
- `generate_until` -> the inference engine (`infer.engine.LLM`), greedy unless `do_sample`/`temperature`
  ask otherwise, at most `max_gen_toks` new tokens (default 256), stopped at the `until` strings (cut
  from the text, as lm-eval cuts them); the prompt is cut from the left to leave room for the new tokens.

The prefix token is `bpb.start_token(chat)` (BOS when the model adds one, else end-of-text);
lm-eval's `hf` backend uses the tokenizer's BOS whenever it names one, even for a model that never adds
it (SmolLM2 names `<|im_start|>`), so pass `prefix_token_id` to either side to compare like with like.
With `--apply_chat_template`, prompts go through the model's own chat template (`chat.py`).
"""

from __future__ import annotations

import logging

# lm-eval fills its model registry with its own backends only while the registry is empty; registering
# "scratchlm" first would hide "hf" and the rest from every later `simple_evaluate(model="hf")`.
import lm_eval.models  # noqa: F401
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from scratchlm.errors import ScratchLMError

log = logging.getLogger(__name__)


@register_model("scratchlm")
class ScratchLM(LM):
    def __init__(
        self,
        model=None,
        chat=None,
        batch_size: int | str = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        prefix_token_id: int | None = None,
        device: str = "cpu",
        **engine_config,
    ):
        """`model`: a TransformerLM (then `chat` is its ChatTokenizer) or a spec for `load_model` (a run
        directory, a model directory, a .gguf file, a pretrained name)."""
        super().__init__()
        from scratchlm.eval.bpb import start_token
        from scratchlm.eval.loglik import Scorer

        if model is None:
            raise ScratchLMError("ScratchLM needs model= (a model, or a run/model directory or pretrained name)")
        if isinstance(model, str):
            from scratchlm.model.model_dir import load_model

            self.spec = model
            model, chat = load_model(model, device=device)
        elif chat is None:
            raise ScratchLMError("ScratchLM(model=<a TransformerLM>) also needs chat= (its ChatTokenizer)")
        else:
            self.spec = type(model).__name__
        self.model, self.chat = model.eval(), chat
        self.max_length = min(int(max_length or model.config.context_length), model.config.context_length)
        self.max_gen_toks = int(max_gen_toks)
        self.prefix = int(prefix_token_id) if prefix_token_id is not None else start_token(chat)
        batch = 8 if batch_size == "auto" else int(batch_size)  # "auto": lm-eval's default spelling
        self.scorer = Scorer(model, chat, batch, max_length=self.max_length)
        self.scorer.start = self.prefix
        self.engine_config = engine_config
        self._llm = None
        self._device = next(model.parameters()).device

    # ------------------------------------------------------------------ log-likelihoods
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args) for r in requests]
        return [(float(ll), bool(g)) for ll, g in self.scorer.loglikelihood(pairs)]

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from scratchlm.eval.bpb import sliding_nll

        out = []
        head = self.model.head.weight
        for r in requests:
            (text,) = r.args
            ids = self.chat.encode(text, add_special=False)
            if not ids:
                out.append(0.0)
                continue
            nll = sliding_nll(
                lambda x: self.model(x, output="hidden"), head, ids, self.prefix, self.max_length, self.max_length, 256
            )
            out.append(-nll)
        return out

    # ------------------------------------------------------------------ generation
    @property
    def llm(self):
        if self._llm is None:
            from scratchlm.infer.engine import LLM

            self._llm = LLM(self.model, self.chat, **self.engine_config)
        return self._llm

    def sampling_params(self, kwargs: dict):
        from scratchlm.infer.sampling import SamplingParams

        kwargs = dict(kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 1.0 if do_sample else 0.0))
        if not do_sample:
            temperature = 0.0
        params = SamplingParams(
            temperature=temperature,
            top_p=float(kwargs.pop("top_p", 1.0) or 1.0),
            top_k=kwargs.pop("top_k", None),
            seed=kwargs.pop("seed", None),
            max_tokens=max_new,
            stop=[s for s in until if s],
        )
        if kwargs:
            log.warning("generation arguments not used by scratchlm: %s", sorted(kwargs))
        return params

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        prompts, params = [], []
        for r in requests:
            context, gen_kwargs = r.args
            p = self.sampling_params(gen_kwargs)
            room = self.max_length - p.max_tokens
            if room < 1:
                raise ScratchLMError(f"max_gen_toks {p.max_tokens} leaves no room in a context of {self.max_length}")
            ids = self.chat.encode(context)
            prompts.append(ids[-room:])
            params.append(p)
        if not prompts:
            return []
        outs = self.llm.generate(prompts, params)
        texts = []
        for o, p in zip(outs, params):
            text = o.outputs[0].text
            for s in p.stop:  # the engine already stops there; cut like lm-eval in case a stop spans the end
                text = text.split(s)[0]
            texts.append(text)
        return texts

    # ------------------------------------------------------------------ chat templates
    @property
    def tokenizer_name(self) -> str:
        return f"scratchlm:{self.chat.tokenizer.hash[:16]}"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.chat.chat_template if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.chat.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)
