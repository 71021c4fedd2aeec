"""Per-token log-probabilities of a response given its prompt, entropies and masked reductions: what every
alignment loss (SFT, DPO, policy gradient, GRPO, PPO) is built from.

    batch = tokenize_prompt_and_output(prompts, outputs, chat)       # input_ids, labels, response_mask (B, L-1)
    out = response_log_probs(model, batch["input_ids"], batch["labels"], return_token_entropy=True)
    out["log_probs"]                                                  # (B, L-1): log p(label_t | input_<=t)
    nll = -masked_mean(out["log_probs"], batch["response_mask"])      # mean over response tokens

Prompt and output are tokenised separately and concatenated (not tokenised as one string), so the response
mask marks exactly the output's tokens even where a joint tokenisation would merge across the boundary;
that is also what a sampler produced, so the trainer scores the very tokens the engine sampled.
Works with a scratchlm `TransformerLM` and with any module returning logits (B, T, V) or an object with
`.logits` (a `transformers` causal LM).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scratchlm.errors import ScratchLMError


def tokenize_prompt_and_output(prompts: list[str], outputs: list[str], tokenizer, pad_id: int | None = None) -> dict:
    """{"input_ids", "labels", "response_mask"}, each (B, L - 1) where L is the longest prompt + output.

    input_ids = ids[:, :-1], labels = ids[:, 1:] of the right-padded concatenations; response_mask is True on
    label positions holding output tokens. `tokenizer.encode(text)` is called without special tokens when it
    takes `add_special` (a ChatTokenizer: the chat template writes its own), plain `encode(text)` otherwise.
    pad_id: default the tokenizer's pad id, else its end-of-sequence id, else 0 (padding is masked anyway)."""
    if len(prompts) != len(outputs):
        raise ScratchLMError(f"{len(prompts)} prompts but {len(outputs)} outputs")
    if not prompts:
        raise ScratchLMError("no prompts to tokenize")
    enc = _encoder(tokenizer)
    seqs, starts = [], []
    for p, o in zip(prompts, outputs, strict=True):
        p_ids, o_ids = enc(p), enc(o)
        seqs.append(p_ids + o_ids)
        starts.append(len(p_ids))
    if pad_id is None:
        pad_id = next(
            (i for i in (getattr(tokenizer, "pad_id", None), getattr(tokenizer, "eos_id", None)) if i is not None), 0
        )
    L = max(len(s) for s in seqs)
    if L < 2:
        raise ScratchLMError("prompt + output must hold at least 2 tokens")
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.bool)
    for b, (s, start) in enumerate(zip(seqs, starts, strict=True)):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, start : len(s)] = True
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "response_mask": mask[:, 1:]}


def _encoder(tokenizer):
    import inspect

    params = inspect.signature(tokenizer.encode).parameters
    if "add_special" in params:
        return lambda text: list(tokenizer.encode(text, add_special=False))
    return lambda text: list(tokenizer.encode(text))


def token_log_probs(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[label] per position, float32: logits (B, T, V), labels (B, T) -> (B, T).
    Computed as logit[label] - logsumexp(logits), without a (B, T, V) log-softmax copy."""
    logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution per position, in nats, float32: (B, T, V) -> (B, T).
    H = logsumexp(z) - sum softmax(z) z (stable for large logits: no log of a tiny probability)."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    return lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def model_logits(model: nn.Module, input_ids: Tensor) -> Tensor:
    """(B, T, V) logits of a scratchlm TransformerLM, a module returning logits, or a HF-style output."""
    import inspect

    takes_output = "output" in inspect.signature(model.forward).parameters  # a scratchlm model (or wrapper)
    out = model(input_ids, output="logits") if takes_output else model(input_ids)
    logits = getattr(out, "logits", out)
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise ScratchLMError(f"the model must return logits (B, T, V); got {type(out).__name__}")
    return logits


def response_log_probs(model: nn.Module, input_ids: Tensor, labels: Tensor, return_token_entropy: bool = False) -> dict:
    """{"log_probs": (B, T)} (+ "token_entropy": (B, T)) of `labels` under `model` run on `input_ids`, both
    (B, T). Gradients flow through the log-probs (the entropy is detached: it is logged, not optimised)."""
    if input_ids.shape != labels.shape:
        raise ScratchLMError(f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} differ in shape")
    logits = model_logits(model, input_ids)
    out = {"log_probs": token_log_probs(logits, labels)}
    if return_token_entropy:
        with torch.no_grad():
            out["token_entropy"] = token_entropy(logits)
    return out


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over the positions where mask is True (along `dim`, or all); an empty row gives 0, not NaN."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp_min(1)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1)


def masked_normalize(x: Tensor, mask: Tensor, normalize_constant: float, dim: int | None = None) -> Tensor:
    """Sum of x over the masked positions divided by a constant (Dr. GRPO's length normalisation: every token
    weighs the same whatever the length of its response)."""
    if normalize_constant == 0:
        raise ScratchLMError("normalize_constant must not be 0")
    m = mask.to(x.dtype)
    s = (x * m).sum() if dim is None else (x * m).sum(dim)
    return s / normalize_constant
