"""Logit distillation: a small student learns a teacher's next-token distributions (Hinton et al. 2015).

    kd = distill_loss(student_logits, teacher_logits, targets, kind="forward", temperature=2.0)
    topk = teacher_topk(teacher_logits, k=64, temperature=2.0)          # what a cache keeps per position
    kd = topk_distill_loss(student_logits, topk, targets, kind="forward", temperature=2.0)

    write_topk_cache(teacher, "train.bin", "train.topk", k=64, seq_len=256, teacher_name="smollm2-135m-instruct")
    loss_fn = DistillLoss.from_config(cfg)      # a LossFn for train_step: alpha * KD + (1 - alpha) * CE

In training: `scratchlm train --preset ... --set loss=distill --set distill.teacher=smollm2-135m-instruct`
(config keys in `DistillConfig`, train/config.py). The teacher must share the student's tokenizer.

The divergences (per position, summed over the vocabulary; p the teacher's, q the student's distribution,
both softmax(z / temperature)):
    forward  KL(p || q) = sum p (log p - log q)    mean-seeking: q covers every token p gives mass to
    reverse  KL(q || p) = sum q (log q - log p)    mode-seeking: q concentrates on p's likely tokens
                                                  (MiniLLM, Gu et al. 2024)
    mix      (1 - beta) KL(p || q) + beta KL(q || p)
Each is averaged over the positions whose target is not IGNORE_INDEX and multiplied by temperature^2: the
gradient of the softened KL scales as 1 / temperature^2, so this keeps the KD term's weight against the
cross-entropy independent of the temperature (Hinton et al. 2015, section 2).

Top-k: a cache keeps, per position, the teacher's k largest log-probs, their token ids, and the log of the
mass left over ("rest"). The KL is then taken over k + 1 buckets: the k tokens and one "rest" bucket holding
every other token (the student's rest mass is its probability of all tokens outside the teacher's top k).
Why a rest bucket rather than renormalising the teacher over its top k: renormalising tells the student
that every other token has probability 0, so forward KL pushes all its mass into the k tokens (overconfident,
and reverse KL becomes infinite); with the rest bucket the student only learns how much mass lies outside
the top k, which the teacher does know. It is the exact KL between the two bucketed distributions (a lower
bound on the full KL) and equals it at k = V.

Shapes: B batch, T time, V vocabulary, k cached entries per position, N positions of a token file.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_dir, read_json, write_json
from scratchlm.model.primitives import CROSS_ENTROPY
from scratchlm.train.data import IGNORE_INDEX, TokenData, eval_windows

if TYPE_CHECKING:
    from scratchlm.train.config import DistillConfig, TrainConfig

Kind = Literal["forward", "reverse", "mix"]
KINDS = ("forward", "reverse", "mix")
# Stands in for log 0 in fp32: exp(-1e4) is exactly 0, yet (unlike -inf) it keeps every difference and
# every gradient finite, so an empty bucket (the rest bucket at k = V) adds exactly 0 to the KL.
LOG_ZERO = -1.0e4


# ---------------------------------------------------------------------------------------------
# pure losses


def check_distill_args(kind: str, temperature: float, beta: float = 0.5) -> None:
    if kind not in KINDS:
        raise ScratchLMError(f"unknown distillation kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):  # also catches NaN
        raise ScratchLMError(f"the distillation temperature must be > 0, got {temperature}")
    if not 0 <= beta <= 1:
        raise ScratchLMError(f"the distillation beta must be in [0, 1], got {beta}")


def divergence(logp: Tensor, logq: Tensor, kind: Kind = "forward", beta: float = 0.5) -> Tensor:
    """Per-position divergence between the teacher's log-probs `logp` and the student's `logq`, both (..., C)
    over the same C outcomes (the vocabulary, or top-k buckets). Returns (...)."""
    if kind not in KINDS:
        raise ScratchLMError(f"unknown distillation kind {kind!r}: expected one of {', '.join(KINDS)}")
    out = 0.0
    if kind in ("forward", "mix"):  # KL(p || q)
        fwd = (logp.exp() * (logp - logq)).sum(-1)
        out = out + (fwd if kind == "forward" else (1 - beta) * fwd)
    if kind in ("reverse", "mix"):  # KL(q || p)
        rev = (logq.exp() * (logq - logp)).sum(-1)
        out = out + (rev if kind == "reverse" else beta * rev)
    return out


def masked_mean(values: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean of `values` (B, T) over the positions whose target (B, T) is not `ignore_index` (0 if none)."""
    mask = targets != ignore_index  # (B, T)
    return (values * mask).sum() / mask.sum().clamp_min(1)


def distill_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    kind: Kind = "forward",
    temperature: float = 1.0,
    beta: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """temperature^2 x the mean divergence between softmax(teacher / tau) and softmax(student / tau).

    student_logits, teacher_logits (B, T, V) (the same V), targets (B, T): IGNORE_INDEX positions are skipped.
    In fp32 whatever the logits' dtype; the teacher's logits are treated as constants (detached)."""
    check_distill_args(kind, temperature, beta)
    if student_logits.shape != teacher_logits.shape:
        raise ScratchLMError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ: distillation needs the same batch, length and vocabulary"
        )
    logq = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, T, V)
    logp = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)  # (B, T, V)
    return temperature**2 * masked_mean(divergence(logp, logq, kind, beta), targets, ignore_index)


class TopK(NamedTuple):
    """The teacher's top k per position, at one temperature: what a cache stores."""

    logprobs: Tensor  # (..., k) float32: log softmax(z / tau) of the k most likely tokens, in descending order
    indices: Tensor  # (..., k) int64: their token ids
    rest: Tensor  # (...) float32: log of the mass of every other token (LOG_ZERO-ish when k = V)


def rest_logmass(logprobs: Tensor, indices: Tensor) -> Tensor:
    """log of the probability mass outside `indices`: logprobs (..., V) log-probs, indices (..., k). Exact
    (a logsumexp over the other tokens, not log(1 - sum of the top k), which cancels badly when that sum is
    near 1); LOG_ZERO + log V or so when the top k is the whole vocabulary."""
    outside = logprobs.scatter(-1, indices, LOG_ZERO)  # (..., V) the top k knocked out
    return torch.logsumexp(outside, dim=-1)  # (...)


def student_rest(q_top: Tensor, vocab: int) -> Tensor:
    """log(1 - sum exp(q_top)): the student's mass outside the teacher's top k, q_top (..., k) log-probs.

    From the k values alone (the V-wide alternative, `rest_logmass`, costs a (B, T, V) copy per step), in
    float64 so the subtraction keeps ~1e-16 absolute precision; clamped to 1e-30 where rounding leaves
    nothing. At k = V the bucket is empty by construction: LOG_ZERO, as the teacher's."""
    if q_top.shape[-1] == vocab:
        return torch.full_like(q_top[..., 0], LOG_ZERO)
    rest = 1 - q_top.double().exp().sum(-1)  # (...)
    return rest.clamp_min(1e-30).log().float()


@torch.no_grad()
def teacher_topk(teacher_logits: Tensor, k: int, temperature: float = 1.0) -> TopK:
    """The top `k` of softmax(teacher_logits / temperature), teacher_logits (..., V)."""
    check_distill_args("forward", temperature)
    vocab = teacher_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ScratchLMError(f"top-k needs 1 <= k <= the vocabulary size {vocab}, got k = {k}")
    logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (..., V)
    values, indices = logp.topk(k, dim=-1)  # (..., k) each, descending
    return TopK(values, indices, rest_logmass(logp, indices))


def topk_distill_loss(
    student_logits: Tensor,
    topk: TopK,
    targets: Tensor,
    kind: Kind = "forward",
    temperature: float = 1.0,
    beta: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """`distill_loss` against a teacher known only by its top k + rest mass (see the module docstring).

    student_logits (B, T, V); topk: logprobs / indices (B, T, k), rest (B, T), made at `temperature`."""
    check_distill_args(kind, temperature, beta)
    if topk.indices.shape[:-1] != student_logits.shape[:-1] or topk.logprobs.shape != topk.indices.shape:
        raise ScratchLMError(
            f"the teacher's top-k {tuple(topk.indices.shape)} does not fit the student logits "
            f"{tuple(student_logits.shape)}"
        )
    indices = topk.indices.long()
    z = student_logits.float()  # (B, T, V)
    z = z / temperature if temperature != 1 else z  # no V-wide copy (and its backward) at temperature 1
    lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (B, T, 1); no (B, T, V) log-softmax is kept
    q_top = z.gather(-1, indices) - lse  # (B, T, k) the student's log-probs of the teacher's top k
    q_rest = student_rest(q_top, vocab=z.shape[-1])  # (B, T)
    logq_b = torch.cat([q_top, q_rest.unsqueeze(-1)], dim=-1)  # (B, T, k + 1) buckets
    logp_b = torch.cat([topk.logprobs.float(), topk.rest.float().unsqueeze(-1)], dim=-1)  # (B, T, k + 1)
    return temperature**2 * masked_mean(divergence(logp_b, logq_b, kind, beta), targets, ignore_index)


# ---------------------------------------------------------------------------------------------
# the top-k cache: the teacher run once over a token file

CACHE_FORMAT = "scratchlm-distill-topk"
CACHE_VERSION = 1
CACHE_META = "cache.json"
CACHE_TENSORS = "topk.safetensors"


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_same_tokenizer(teacher_vocab: int, student_vocab: int, teacher_hash=None, data_hash=None, what="") -> None:
    """The teacher's logits index the student's vocabulary only if both use one tokenizer: equal vocabulary
    sizes, and (where both are known) the same tokenizer hash."""
    if teacher_vocab != student_vocab:
        raise ScratchLMError(
            f"the teacher{what} has vocab_size {teacher_vocab} but the student {student_vocab}: distillation "
            "compares the two next-token distributions id by id, so both must use the same tokenizer"
        )
    if teacher_hash and data_hash and teacher_hash != data_hash:
        raise ScratchLMError(
            f"the teacher{what} uses another tokenizer (hash {teacher_hash[:12]}) than the training data "
            f"({data_hash[:12]}): distillation needs the student and the teacher to share the tokenizer"
        )


def _tokenizer_hash(chat) -> str | None:
    tok = getattr(chat, "tokenizer", chat)
    return getattr(tok, "hash", None)


@torch.no_grad()
def write_topk_cache(
    teacher: nn.Module,
    tokens: str | Path,
    out: str | Path,
    *,
    k: int = 64,
    temperature: float = 1.0,
    seq_len: int = 256,
    batch_size: int = 8,
    teacher_name: str = "",
    teacher_tokenizer_hash: str | None = None,
    precision: Literal["fp32", "bf16"] = "fp32",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Run `teacher` once over the token file `tokens` and write its top-`k` at `temperature` for every position
    that has a next token (N - 1 of them) to the directory `out` (written atomically): topk.safetensors
    (logprobs (N-1, k) float32, indices (N-1, k) int32, rest (N-1,) float32) and cache.json (teacher, k,
    temperature, seq_len, the token file's sha256 and length, ...). Returns the cache.json dict.

    Position p holds the teacher's distribution of token p + 1 given tokens [c * seq_len, p] (windows of
    `seq_len` tokens, back to back, as `eval_windows` reads them). Training windows start anywhere, so a
    student sees a different prefix than the teacher did at the start of each window: an approximation of
    the same kind as windows that cross document boundaries. bf16 roughly halves the teacher's CPU time; the
    log-softmax and top-k are taken in fp32. The cache is built in memory (N x k x 8 bytes: 134 MB for 262k
    tokens at k = 64) and written once at the end, so an interrupted run leaves nothing behind."""
    check_distill_args("forward", temperature)
    if precision not in ("fp32", "bf16"):
        raise ScratchLMError(f"precision must be fp32 or bf16, got {precision!r}")
    if seq_len < 1 or batch_size < 1:
        raise ScratchLMError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
    data = TokenData(tokens)
    vocab = teacher.config.vocab_size
    check_same_tokenizer(vocab, data.vocab_size, teacher_tokenizer_hash, data.tokenizer_hash, what=" " + teacher_name)
    if not 1 <= k <= vocab:
        raise ScratchLMError(f"top-k needs 1 <= k <= the vocabulary size {vocab}, got k = {k}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ScratchLMError(f"{out} already exists (pass overwrite=True to replace it)")
    n = len(data) - 1  # positions with a next token
    if n < 1:
        raise ScratchLMError(f"{data.name} has {len(data)} tokens: a cache needs at least 2")
    device = next(teacher.parameters()).device
    logprobs = torch.empty(n, k, dtype=torch.float32)  # (N-1, k)
    indices = torch.empty(n, k, dtype=torch.int32)  # (N-1, k)
    rest = torch.empty(n, dtype=torch.float32)  # (N-1,)
    was_training = teacher.training
    teacher.eval()
    t0 = last = time.perf_counter()
    done = 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    for x, y in eval_windows(data, batch_size, seq_len):  # (b, T) each; y = IGNORE_INDEX past the end
        with autocast:
            logits = teacher(x.to(device), output="logits")  # (b, T, V)
        top = teacher_topk(logits, k, temperature)
        keep = (y != IGNORE_INDEX).reshape(-1)  # (b * T,) real positions, in file order
        m = int(keep.sum())
        logprobs[done : done + m] = top.logprobs.reshape(-1, k)[keep.to(device)].cpu()
        indices[done : done + m] = top.indices.reshape(-1, k)[keep.to(device)].to(torch.int32).cpu()
        rest[done : done + m] = top.rest.reshape(-1)[keep.to(device)].cpu()
        done += m
        now = time.perf_counter()
        if progress and (now - last > 10 or done == n):
            rate = done / (now - t0)
            print(f"top-{k} cache: {done}/{n} positions, {rate:.0f} tok/s, ETA {(n - done) / rate:.0f} s", flush=True)
            last = now
    teacher.train(was_training)
    meta = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "teacher": teacher_name,
        "teacher_tokenizer_hash": teacher_tokenizer_hash,
        "vocab_size": vocab,
        "k": k,
        "temperature": float(temperature),
        "seq_len": seq_len,
        "precision": precision,
        "positions": n,
        "tokens": {
            "path": str(Path(tokens).resolve()),
            "count": len(data),
            "sha256": file_sha256(tokens),
            "tokenizer_hash": data.tokenizer_hash,
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }
    from safetensors.torch import save_file

    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_file({"logprobs": logprobs, "indices": indices, "rest": rest}, str(tmp / CACHE_TENSORS))
        write_json(tmp / CACHE_META, meta)
    return meta


class TopKCache:
    """A cache written by `write_topk_cache`, opened lazily (memory-mapped rows), checked against the token file
    it is used with: `cache.windows(starts, T)` -> TopK of (B, T, ...) for windows starting at `starts`."""

    def __init__(self, path: str | Path, tokens: str | Path | None = None, temperature: float | None = None):
        from safetensors import safe_open

        self.path = Path(path)
        meta = read_json(self.path / CACHE_META, "top-k distillation cache")
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            raise ScratchLMError(f"{self.path} is not a top-k distillation cache (no {CACHE_META} of that format)")
        if meta.get("version") != CACHE_VERSION:
            raise ScratchLMError(f"{self.path} is cache version {meta.get('version')}; this reads {CACHE_VERSION}")
        self.meta = meta
        if tokens is not None:
            self.check_tokens(tokens)
        if temperature is not None and not math.isclose(temperature, meta["temperature"]):
            raise ScratchLMError(
                f"{self.path} holds the teacher's top-k at temperature {meta['temperature']}, not {temperature}: "
                "set distill.temperature to it, or write a cache at this temperature"
            )
        tensors = self.path / CACHE_TENSORS
        if not tensors.is_file():
            raise ScratchLMError(f"{self.path} has no {CACHE_TENSORS}")
        self._file = safe_open(str(tensors), framework="pt")
        shapes = {name: self._file.get_slice(name).get_shape() for name in ("logprobs", "indices", "rest")}
        n, k = meta["positions"], meta["k"]
        if shapes != {"logprobs": [n, k], "indices": [n, k], "rest": [n]}:
            raise ScratchLMError(f"{self.path} is damaged: tensor shapes {shapes} do not match {CACHE_META}")

    @property
    def k(self) -> int:
        return self.meta["k"]

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    def check_tokens(self, tokens: str | Path) -> None:
        """Error unless `tokens` is the very token file the cache was written from (length and sha256)."""
        want = self.meta["tokens"]
        data = TokenData(tokens)
        if len(data) != want["count"] or file_sha256(tokens) != want["sha256"]:
            raise ScratchLMError(
                f"the top-k cache {self.path} was written from another token file ({want['path']}, "
                f"{want['count']} tokens) than {tokens} ({len(data)} tokens): write a cache of this file"
            )

    def windows(self, starts, seq_len: int) -> TopK:
        """The cached top-k of positions [s, s + seq_len) for each s in `starts` (B,): TopK of (B, T, k) / (B, T)."""
        rows = []
        for s in (int(s) for s in starts):
            if s < 0 or s + seq_len > self.meta["positions"]:
                raise ScratchLMError(
                    f"window [{s}, {s + seq_len}) is outside the {self.meta['positions']} cached positions"
                )
            rows.append([self._file.get_slice(name)[s : s + seq_len] for name in ("logprobs", "indices", "rest")])
        return TopK(*(torch.stack(parts) for parts in zip(*rows, strict=True)))


# ---------------------------------------------------------------------------------------------
# the LossFn


@dataclass
class DistillTargets:
    """The `targets` a DistillLoss reads (made by `DistillLoss.batch_targets`; the Trainer slices them into
    micro-batches and moves them to the device like a tensor)."""

    targets: Tensor  # (B, T) next-token ids; IGNORE_INDEX = no loss at that position
    inputs: Tensor | None = None  # (B, T) the student's inputs, for a teacher run live
    topk: TopK | None = None  # the cached teacher top-k of these positions, instead of a live teacher

    def __getitem__(self, rows) -> DistillTargets:
        topk = None if self.topk is None else TopK(*(t[rows] for t in self.topk))
        return DistillTargets(self.targets[rows], None if self.inputs is None else self.inputs[rows], topk)

    def to(self, device) -> DistillTargets:
        topk = None if self.topk is None else TopK(*(t.to(device) for t in self.topk))
        return DistillTargets(self.targets.to(device), None if self.inputs is None else self.inputs.to(device), topk)


class DistillLoss:
    """alpha x KD + (1 - alpha) x next-token cross-entropy; parts "kd" and "ce" (both unweighted).

    With a `teacher` (a TransformerLM, frozen, moved to the student's device on first use) the KD term is
    `distill_loss` against the teacher's logits on the same inputs (a forward under no_grad, in the step's
    autocast); with a `cache` (TopKCache) it is `topk_distill_loss` against the cached top-k of the batch's
    positions. Targets are `DistillTargets` (see `batch_targets`)."""

    needs: ClassVar[str] = "logits"

    def __init__(
        self,
        cfg: DistillConfig,
        teacher: nn.Module | None = None,
        cache: TopKCache | None = None,
        ignore_index: int = IGNORE_INDEX,
        ops: str = "torch",
    ):
        check_distill_args(cfg.kind, cfg.temperature, cfg.beta)
        if not 0 <= cfg.alpha <= 1:
            raise ScratchLMError(f"distill.alpha must be in [0, 1], got {cfg.alpha}")
        if (teacher is None) == (cache is None):
            raise ScratchLMError("DistillLoss needs a teacher model or a top-k cache (exactly one)")
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.cfg, self.teacher, self.cache = cfg, teacher, cache
        self.ignore_index = ignore_index
        self.ce_fn = CROSS_ENTROPY[ops]

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> DistillLoss:
        """The loss of `cfg.distill` for a student of `cfg.model` trained on `cfg.data.train`: the teacher
        loaded (or the cache opened), and checked to share the student's tokenizer and, for a cache, its data."""
        from scratchlm.tokenizer.token_file import read_token_meta

        d = cfg.distill
        data_hash = read_token_meta(cfg.data.train).get("tokenizer_hash") if cfg.data.train else None
        if d.topk_cache:
            if not cfg.data.train:
                raise ScratchLMError("distill.topk_cache needs data.train: the token file the cache was written from")
            cache = TopKCache(d.topk_cache, tokens=cfg.data.train, temperature=d.temperature)
            if d.teacher and d.teacher != cache.meta["teacher"]:
                raise ScratchLMError(
                    f"distill.teacher {d.teacher!r} is not the teacher of {d.topk_cache} ({cache.meta['teacher']!r})"
                )
            check_same_tokenizer(
                cache.vocab_size, cfg.model.vocab_size, cache.meta.get("teacher_tokenizer_hash"), data_hash,
                what=f" of {d.topk_cache}",
            )  # fmt: skip
            return cls(d, cache=cache, ops=cfg.model.ops)
        from scratchlm.model.model_dir import load_model

        teacher, chat = load_model(d.teacher, progress=False)
        check_same_tokenizer(
            teacher.config.vocab_size, cfg.model.vocab_size, _tokenizer_hash(chat), data_hash, what=f" {d.teacher}"
        )
        return cls(d, teacher=teacher, ops=cfg.model.ops)

    def batch_targets(self, inputs: Tensor, targets: Tensor, starts) -> DistillTargets:
        """What this loss reads for a batch of windows: inputs, targets (B, T) (as the loader makes them) and
        the windows' start offsets in the token file (B,) (for the cache)."""
        if self.cache is not None:
            return DistillTargets(targets, topk=self.cache.windows(starts, targets.shape[1]))
        return DistillTargets(targets, inputs=inputs)

    def __call__(self, logits: Tensor, targets: DistillTargets, model: nn.Module | None = None):
        if not isinstance(targets, DistillTargets):
            raise ScratchLMError(
                "DistillLoss needs DistillTargets (inputs or cached teacher top-k with the targets): "
                "make them with loss_fn.batch_targets(x, y, starts)"
            )
        c, y = self.cfg, targets.targets
        ce = self.ce_fn(logits, y, ignore_index=self.ignore_index)
        if self.cache is not None:
            if targets.topk is None:
                raise ScratchLMError("this DistillLoss reads a top-k cache: its targets carry no cached top-k")
            kd = topk_distill_loss(logits, targets.topk, y, c.kind, c.temperature, c.beta, self.ignore_index)
        else:
            if targets.inputs is None:
                raise ScratchLMError("this DistillLoss runs its teacher: its targets carry no inputs")
            teacher_logits = self.teacher_logits(targets.inputs)  # (B, T, V)
            kd = distill_loss(logits, teacher_logits, y, c.kind, c.temperature, c.beta, self.ignore_index)
        total = c.alpha * kd + (1 - c.alpha) * ce
        return total, {"kd": kd.detach(), "ce": ce.detach()}

    @torch.no_grad()
    def teacher_logits(self, inputs: Tensor) -> Tensor:
        """The teacher's logits (B, T, V) on `inputs` (B, T), the teacher moved to their device first."""
        if next(self.teacher.parameters()).device != inputs.device:
            self.teacher.to(inputs.device)
        return self.teacher(inputs, output="logits")
