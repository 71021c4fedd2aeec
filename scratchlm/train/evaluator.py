"""Evaluation during training: validation loss and bits per byte over the validation file, and a few
sampled completions (printed, logged to samples.txt) so a run can be read as well as plotted.

    evaluator = Evaluator(cfg, valid_data, tokenizer, device)
    evaluator.loss(model)          # {"val_loss", "val_tokens", "val_bpb"}; {} without validation data
    evaluator.samples(model, step) # ["prompt + completion", ...]; [] without a tokenizer

Evaluation reads the logits and the plain cross-entropy (never the fused training loss, whose forward
computes gradients too), through the plain model, not its compiled / DDP wrapper.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from scratchlm.model.generate import generate
from scratchlm.model.primitives import cross_entropy
from scratchlm.train.config import TrainConfig
from scratchlm.train.data import IGNORE_INDEX, TokenData, bits_per_byte, eval_windows
from scratchlm.train.step import autocast_context


class Evaluator:
    """Validation loss / bits per byte over the validation file, and sampled completions."""

    def __init__(
        self, cfg: TrainConfig, valid: TokenData | None, tokenizer, device: torch.device, shard=None, group=None
    ):
        """shard: `(x, y) -> (x, y)`, this process's part of a batch (context parallel: chunks of each sequence),
        whose loss sums are then added over the processes of `group` (a process group or 1-d DeviceMesh)."""
        self.cfg, self.valid, self.tokenizer, self.device = cfg, valid, tokenizer, device
        self.shard, self.group = shard, group

    @torch.no_grad()
    def loss(self, model: nn.Module) -> dict:
        """Mean next-token loss over (the first `eval_tokens` of) the validation file; bits per byte when the
        file's sidecar knows its bytes per token."""
        if self.valid is None:
            return {}
        model.eval()
        total, count = 0.0, 0
        for x, y in eval_windows(self.valid, self.cfg.batch_size, self.cfg.context, self.cfg.eval_tokens):
            x, y = x.to(self.device), y.to(self.device)  # (B, T) each; y = -100 at padding
            if self.shard is not None:
                x, y = self.shard(x, y)
            with autocast_context(self.cfg.precision, self.device):
                logits = model(x)  # (B, T, V)
            shard = getattr(model, "vocab_parallel", None)  # loss parallel: this rank's slice of the vocabulary
            ce = shard.cross_entropy if shard is not None else cross_entropy
            total += ce(logits, y, reduction="sum").item()
            count += int((y != IGNORE_INDEX).sum())
        model.train()
        if self.group is not None:  # each process scored its part of every window: add them up
            sums = torch.tensor([total, count], dtype=torch.float64, device=self.device)
            group = self.group.get_group() if hasattr(self.group, "get_group") else self.group
            dist.all_reduce(sums, group=group)
            total, count = float(sums[0]), int(sums[1])
        nll = total / max(count, 1)
        out = {"val_loss": nll, "val_tokens": count}
        bpt = self.valid.meta.get("bytes_per_token")
        if bpt:
            out["val_bpb"] = bits_per_byte(total, count, bpt)
        return out

    def samples(self, model: nn.Module, step: int) -> list[str]:
        """One completion of `sample_tokens` per prompt in `cfg.sample_prompts` ("" = from the document
        separator), sampled with a seed fixed by (step, prompt) so reruns print the same text."""
        if self.tokenizer is None or self.cfg.sample_tokens <= 0:
            return []
        tok = self.tokenizer
        sep = tok.end_of_text_id  # <|endoftext|>, else the first special token
        out = []
        model.eval()
        for i, prompt in enumerate(self.cfg.sample_prompts):
            ids = tok.encode(prompt) if prompt else ([sep] if sep is not None else [0])
            ids = ids[-(self.cfg.model.context_length - self.cfg.sample_tokens) :] or [0]
            new = generate(
                model,
                ids,
                self.cfg.sample_tokens,
                temperature=0.8,
                top_k=50,
                seed=step * 1000 + i,
                stop_tokens=[sep] if sep is not None else (),
            )
            out.append(prompt + tok.decode(new[len(ids) :]))
        model.train()
        return out
