"""Supervised fine-tuning on chat data: prompt tokens masked out, examples packed into fixed-length rows.

    scratchlm align sft --model smollm2-135m-instruct --data chats.jsonl --out runs/sft --set steps=100
    summary = train_sft(SFTConfig(model="smollm2-135m-instruct", data="chats.jsonl", out_dir="runs/sft"))

Records: {"messages": [{"role", "content"}, ...]} (every assistant turn is a target) or {"prompt", "response"}.
Each example is encoded with the model's chat template; only assistant tokens count in the loss. With
`pack = true` examples are laid end to end in rows of `seq_len` tokens (an example never straddles two rows);
`PackedLM` gives every example its own positions (0, 1, ...) and a block-diagonal causal attention mask
(installed through `set_attend`), so a row of packed examples computes exactly what the examples would alone.
Steps go through the shared `train_step`; OUT/metrics.jsonl, OUT/checkpoint.pt (exact resume), OUT/model.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from scratchlm.align.data import read_jsonl
from scratchlm.align.logprobs import token_log_probs
from scratchlm.align.losses import sft_loss
from scratchlm.align.run_dir import open_run_dir, pad_id, save_checkpoint
from scratchlm.errors import ScratchLMError

log = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    model: str = "smollm2-135m-instruct"  # pretrained name, model or run directory
    data: str = ""  # JSONL(.gz): {"messages": [...]} or {"prompt", "response"}
    out_dir: str = "runs/sft"
    steps: int = 100
    batch_size: int = 8  # rows per optimizer step
    micro_batch: int = 4  # rows per forward
    seq_len: int = 512  # tokens per row (an example longer than this is cut: prompt from the left)
    pack: bool = True  # several examples per row (document-masked) instead of one padded example per row
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 1.0
    normalize: Literal["tokens", "constant"] = "tokens"  # mean over response tokens, or sum / seq_len
    checkpoint_every: int = 50
    precision: Literal["fp32", "bf16"] = "bf16"
    seed: int = 0
    on_error: Literal["skip", "fatal"] = "skip"  # malformed JSONL lines / records
    device: str = "cpu"

    def validate(self) -> None:
        if self.batch_size < 1 or self.micro_batch < 1 or self.batch_size % self.micro_batch:
            raise ScratchLMError(f"batch_size {self.batch_size} must be a positive multiple of micro_batch")
        if self.steps < 0 or self.seq_len < 4:
            raise ScratchLMError("steps must be >= 0 and seq_len >= 4")


@dataclass
class Example:
    ids: list[int]
    mask: list[bool]  # True where the token is a target (assistant text)


def sft_messages(records: list[dict], on_error: str = "skip") -> tuple[list[list[dict]], list[str]]:
    """Chat messages per record; records of neither form are named (record index) and skipped or fatal."""
    out, problems = [], []
    for i, r in enumerate(records):
        if isinstance(r.get("messages"), list) and all(isinstance(m, dict) for m in r["messages"]):
            msgs = [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in r["messages"]]
            if any(m["role"] == "assistant" for m in msgs):
                out.append(msgs)
                continue
            problems.append(f"record {i}: no assistant message")
        elif isinstance(r.get("prompt"), str) and isinstance(r.get("response"), str):
            out.append([{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}])
            continue
        else:
            problems.append(f"record {i}: neither 'messages' nor 'prompt' + 'response' strings")
        if on_error == "fatal":
            raise ScratchLMError(problems[-1])
    return out, problems


def encode_chat(messages: list[dict], chat, seq_len: int) -> Example | None:
    """Token ids of a conversation with the chat template, assistant turns as targets. The template is applied
    to growing prefixes, so every token is attributed to the turn that adds it. Too long: the oldest tokens
    are cut (a warning is the caller's); nothing left to learn: None."""
    ids: list[int] = []
    mask: list[bool] = []
    for i, m in enumerate(messages):
        if chat.chat_template is not None:
            prefix = messages[: i + 1]
            full = chat.apply_chat_template(prefix, add_generation_prompt=False, tokenize=True)
            if m["role"] == "assistant":  # the generation prompt is context, not a target
                ctx = chat.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=True)
                if full[: len(ctx)] == ctx and len(ctx) >= len(ids):
                    mask += [False] * (len(ctx) - len(ids))
                    ids = list(ctx)
        else:
            full = ids + chat.encode(f"{m['role']}: {m['content']}\n", add_special=False)
        if full[: len(ids)] != ids:
            raise ScratchLMError("the chat template does not extend a conversation's prefix: cannot mask turns")
        mask += [m["role"] == "assistant"] * (len(full) - len(ids))
        ids = list(full)
    if len(ids) > seq_len:
        ids, mask = ids[-seq_len:], mask[-seq_len:]
    if not any(mask[1:]):  # labels are ids[1:]
        return None
    return Example(ids, mask)


def pack_examples(examples: list[Example], seq_len: int, pad_id: int, pack: bool = True) -> list[dict]:
    """Rows of exactly seq_len + 1 tokens (inputs are [:-1], labels [1:]): first-fit in order, an example never
    split. Each row: ids, target mask (of the labels), doc (document index per input token; -1 = padding)."""
    rows: list[dict] = []
    cur = None
    for ex in examples:
        if cur is None or not pack or len(cur["ids"]) + len(ex.ids) > seq_len + 1:
            cur = {"ids": [], "mask": [], "doc": [], "n": 0}
            rows.append(cur)
        cur["ids"] += ex.ids
        cur["mask"] += ex.mask
        cur["doc"] += [cur["n"]] * len(ex.ids)
        cur["n"] += 1
    out = []
    for r in rows:
        pad = seq_len + 1 - len(r["ids"])
        ids, mask, doc = r["ids"] + [pad_id] * pad, r["mask"] + [False] * pad, r["doc"] + [-1] * pad
        # a label is a target only inside its own document (the first token of the next one is not)
        same = [doc[t] == doc[t + 1] and doc[t] >= 0 for t in range(seq_len)]
        out.append({"x": torch.tensor([ids[:-1], doc[:-1]]), "labels": torch.tensor(ids[1:]),
                    "mask": torch.tensor([m and s for m, s in zip(mask[1:], same)])})  # fmt: skip
    return out


def document_positions(doc: Tensor) -> Tensor:
    """(B, T) document index -> position of each token inside its document; -1 where doc is -1."""
    T = doc.shape[1]
    idx = torch.arange(T, device=doc.device).expand_as(doc)
    start = torch.ones_like(doc, dtype=torch.bool)
    start[:, 1:] = doc[:, 1:] != doc[:, :-1]
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values  # index of the document start
    return torch.where(doc >= 0, idx - first, torch.full_like(idx, -1))


class DocumentAttend:
    """An `attend` that also forbids attention across documents (the doc index of the current forward)."""

    def __init__(self, base):
        self.base = base
        self.doc: Tensor | None = None  # (B, T), set by PackedLM.forward for the duration of one forward

    def __call__(self, q, k, v, *, causal=False, mask=None, **kw):
        if self.doc is None:
            return self.base(q, k, v, causal=causal, mask=mask, **kw)
        T = q.shape[-2]
        same = (self.doc[:, :, None] == self.doc[:, None, :])[:, None]  # (B, 1, T, T)
        order = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()  # by index, not position
        m = same & order
        m = m if mask is None else m & mask
        m = m | (self.doc < 0)[:, None, :, None]  # padding queries see everything (their output is unread)
        return self.base(q, k, v, causal=False, mask=m, **kw)


class PackedLM(nn.Module):
    """A TransformerLM reading packed rows x (B, 2, T) = (token ids, document index): per-document positions and
    a block-diagonal causal mask, so packed examples do not see each other."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        if not hasattr(inner, "set_attend") or not hasattr(inner, "attend"):
            raise ScratchLMError("packing needs a scratchlm TransformerLM (set_attend); set pack = false")
        self.inner = inner
        self.doc_attend = DocumentAttend(inner.attend)
        inner.set_attend(self.doc_attend)

    def forward(self, x: Tensor, output: str = "logits") -> Tensor:
        ids, doc = x[:, 0], x[:, 1]  # (B, T), (B, T)
        self.doc_attend.doc = doc
        try:
            return self.inner(ids, positions=document_positions(doc), output=output)
        finally:
            self.doc_attend.doc = None


@dataclass
class SFTTargets:
    labels: Tensor  # (B, T)
    mask: Tensor  # (B, T) bool

    def to(self, device) -> SFTTargets:
        return SFTTargets(self.labels.to(device), self.mask.to(device))


@dataclass
class SFTLoss:
    """A LossFn: masked NLL of the target tokens, per token or over a constant (seq_len)."""

    normalize_constant: float | None = None
    needs: ClassVar[str] = "logits"

    def __call__(self, logits: Tensor, y: SFTTargets, model: nn.Module | None = None):
        lp = token_log_probs(logits, y.labels)  # (B, T)
        return sft_loss(lp, y.mask, self.normalize_constant), {"target_tokens": y.mask.sum().float()}


def load_examples(cfg: SFTConfig, chat) -> tuple[list[Example], dict]:
    records, bad_lines = read_jsonl(cfg.data, cfg.on_error)
    convs, bad_records = sft_messages(records, cfg.on_error)
    examples, stats = [], {"records": len(records), "bad_lines": len(bad_lines), "bad_records": len(bad_records),
                           "truncated": 0, "skipped_empty": 0}  # fmt: skip
    for msgs in convs:
        ex = encode_chat(msgs, chat, cfg.seq_len + 1)
        if ex is None:
            stats["skipped_empty"] += 1
            continue
        full = (
            len(chat.apply_chat_template(msgs, add_generation_prompt=False, tokenize=True))
            if chat.chat_template is not None
            else 0
        )
        stats["truncated"] += full > cfg.seq_len + 1
        examples.append(ex)
    if stats["truncated"]:
        log.warning("%d examples longer than seq_len + 1 = %d: cut from the left", stats["truncated"], cfg.seq_len + 1)
    if not examples:
        raise ScratchLMError(f"{cfg.data}: no usable SFT examples ({stats})")
    return examples, stats


def train_sft(cfg: SFTConfig, resume: bool = False, stop_after: int | None = None) -> dict:
    """Run SFT per `cfg`; returns the summary (also OUT/summary.json)."""
    from scratchlm.io import write_json
    from scratchlm.model.model_dir import load_model, save_model_dir
    from scratchlm.train.config import OptimConfig, ScheduleConfig
    from scratchlm.train.optim import build_optimizer
    from scratchlm.train.schedules import Schedule
    from scratchlm.train.step import train_step

    cfg.validate()
    out, ckpt = open_run_dir(cfg.out_dir, resume)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    inner, chat = load_model(cfg.model, device=cfg.device, progress=False)
    pad = pad_id(chat)
    examples, stats = load_examples(cfg, chat)
    random.Random(cfg.seed).shuffle(examples)
    rows = pack_examples(examples, cfg.seq_len, pad, cfg.pack)
    model = PackedLM(inner)
    log.info("SFT: %d examples in %d rows of %d tokens; %s", len(examples), len(rows), cfg.seq_len, stats)

    optimizer = build_optimizer(inner, OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay))
    schedule = Schedule(optimizer, ScheduleConfig(name=cfg.schedule, warmup_steps=cfg.warmup_steps), max(cfg.steps, 1))
    loss_fn = SFTLoss(float(cfg.seq_len) if cfg.normalize == "constant" else None)
    start = 0
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        inner.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    metrics = (out / "metrics.jsonl").open("a")
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    step_seconds = []
    for step in range(start, end):
        model.train()
        idx = [(step * cfg.batch_size + j) % len(rows) for j in range(cfg.batch_size)]
        micro = []
        for i in range(0, len(idx), cfg.micro_batch):
            chunk = [rows[j] for j in idx[i : i + cfg.micro_batch]]
            x = torch.stack([r["x"] for r in chunk]).to(device)  # (b, 2, T)
            y = SFTTargets(torch.stack([r["labels"] for r in chunk]), torch.stack([r["mask"] for r in chunk]))
            micro.append((x, y.to(device)))
        ts = time.perf_counter()
        r = train_step(model, micro, loss_fn, optimizer, schedule, step=step, precision=cfg.precision,
                       grad_clip=cfg.grad_clip)  # fmt: skip
        step_seconds.append(time.perf_counter() - ts)
        rec = {"kind": "train", "step": step + 1, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm,
               **{k: float(v) for k, v in r.parts.items()}, "seconds": step_seconds[-1]}  # fmt: skip
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        if not r.finite:
            raise ScratchLMError(f"non-finite SFT loss at step {step + 1}: lower lr")
        if step + 1 == end or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0):
            state = {"model": inner.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1}
            save_checkpoint(ckpt, state)
    metrics.close()
    if end < cfg.steps:
        return {"stopped_at": end, "checkpoint": str(ckpt)}
    inner.eval()
    inner.set_attend(model.doc_attend.base)  # the saved model attends as usual
    save_model_dir(inner, chat, out / "model", overwrite=True,
                   provenance={"stage": "align sft", "base": cfg.model, "steps": cfg.steps})  # fmt: skip
    median = sorted(step_seconds)[len(step_seconds) // 2] if step_seconds else None
    summary = {"examples": stats, "rows": len(rows), "model_dir": str(out / "model"), "step_seconds_median": median}
    write_json(out / "summary.json", summary)
    return summary
