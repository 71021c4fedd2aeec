"""The training loop: one function, `train(cfg)`, used by `scratchlm train`, sweeps and the quickstart.

    scratchlm train --preset quickstart                       # CPU, one process
    torchrun --nproc_per_node 2 -m scratchlm train --preset quickstart   # data parallel (gloo / NCCL)
    scratchlm train --resume runs/quickstart                  # continue exactly where it stopped

Per optimizer step: set the lr from the schedule; `grad_accum` micro-batches of forward (autocast
to bf16/fp16 when asked; master weights stay fp32), loss (+ z-loss, + MoE aux loss) / grad_accum,
backward; clip the global grad norm; optimizer step. Every `eval_every` steps: validation loss
and bits per byte over the validation file, a few sampled completions, a checkpoint (best kept).
A non-finite loss stops the run with the last good checkpoint left in place.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from scratchlm.config import to_dict, to_toml
from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_write, write_json
from scratchlm.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Context:
    """Process-level facts of a run: device, rank, world size."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ScratchLMError(f"device {name!r} asked for, but no CUDA GPU is available")
    return torch.device(name)


def setup_context(cfg: TrainConfig) -> Context:
    """Single process, or one process of a `torchrun` launch (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(cfg.device)
    if world == 1:
        return Context(device)
    from scratchlm.distributed.ddp import init_process_group

    rank, local_rank = init_process_group(device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return Context(device, rank, world)


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> Path:
    run_dir = Path(cfg.out_dir)
    has_run = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if has_run and not resume:
        if not overwrite:
            raise ScratchLMError(f"{run_dir} already holds a run: pass --resume {run_dir}, another out_dir, or --force")
        import shutil

        for name in ("checkpoints", "metrics.jsonl", "loss.png", "summary.json", "samples.txt"):
            p = run_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


class Evaluator:
    """Validation loss / bits per byte over the validation file, and sampled completions."""

    def __init__(self, cfg: TrainConfig, valid, tokenizer, ctx: Context):
        self.cfg, self.valid, self.tokenizer, self.ctx = cfg, valid, tokenizer, ctx

    @torch.no_grad()
    def loss(self, model) -> dict:
        from scratchlm.model.primitives import cross_entropy
        from scratchlm.train.data import bits_per_byte, eval_windows

        if self.valid is None:
            return {}
        model.eval()
        total, count = 0.0, 0
        for x, y in eval_windows(self.valid, self.cfg.batch_size, self.cfg.context, self.cfg.eval_tokens):
            x, y = x.to(self.ctx.device), y.to(self.ctx.device)
            with autocast_context(self.cfg.precision, self.ctx.device):
                logits = model(x)
            total += cross_entropy(logits, y, reduction="sum").item()
            count += int((y != -100).sum())
        model.train()
        nll = total / max(count, 1)
        out = {"val_loss": nll, "val_tokens": count}
        bpt = self.valid.meta.get("bytes_per_token")
        if bpt:
            out["val_bpb"] = bits_per_byte(total, count, bpt)
        return out

    def samples(self, model, step: int) -> list[str]:
        from scratchlm.model.generate import generate

        if self.tokenizer is None or self.cfg.sample_tokens <= 0:
            return []
        tok = self.tokenizer
        sep = tok.special_ids.get("<|endoftext|>")
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


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Run (or resume) training per `cfg`; returns the run summary (also in `out_dir/summary.json`)."""
    from scratchlm.model import TransformerLM
    from scratchlm.model.accounting import flops_per_token
    from scratchlm.tokenizer import load_tokenizer
    from scratchlm.train import checkpoint as ckpt
    from scratchlm.train.data import RandomWindows, TokenData
    from scratchlm.train.losses import lm_loss
    from scratchlm.train.metrics import MetricsLogger, format_progress, peak_flops, plot_loss_curve
    from scratchlm.train.noise_scale import NoiseScale, grad_sq_norm
    from scratchlm.train.optim import build_optimizer, clip_grad_norm
    from scratchlm.train.schedules import Schedule

    ctx = setup_context(cfg)
    run_dir = prepare_run_dir(cfg, resume, overwrite) if ctx.main else Path(cfg.out_dir)

    # ---- data (checked before any work: missing files, vocab mismatch, too little data)
    if not cfg.data.train:
        raise ScratchLMError("data.train is empty: give a token file (scratchlm tokenizer encode ...)")
    train_data = TokenData(cfg.data.train)
    train_data.check_vocab(cfg.model.vocab_size)
    valid = None
    if cfg.data.valid:
        valid = TokenData(cfg.data.valid, expect_tokenizer_hash=train_data.meta.get("tokenizer_hash"))
        valid.check_vocab(cfg.model.vocab_size)
    tok_path = cfg.data.tokenizer or train_data.meta.get("tokenizer")
    tokenizer = load_tokenizer(tok_path) if tok_path and Path(tok_path).exists() else None
    # One draw per optimizer step of world x batch_size x grad_accum windows, fixed by (seed, step):
    # this rank's rows are split into its micro-batches, so any split of the global batch over
    # processes and accumulation sees the same data.
    loader = RandomWindows(train_data, cfg.batch_size * cfg.grad_accum, cfg.context, cfg.seed, ctx.rank, ctx.world)

    # ---- model, optimizer, schedule
    torch.manual_seed(cfg.seed)
    model = TransformerLM(cfg.model).to(ctx.device)
    optimizer = build_optimizer(model, cfg.optim)
    schedule = Schedule(optimizer, cfg.schedule, cfg.steps)
    start = 0
    best = math.inf
    # small batch = this process's first micro-batch, big batch = the whole step (see noise_scale.py)
    gns = None
    if cfg.noise_scale and cfg.grad_accum > 1:
        gns = NoiseScale(cfg.batch_size * cfg.context, cfg.tokens_per_step * ctx.world)
    if resume:
        saved = ckpt.read_checkpoint_meta(ckpt.find_checkpoint(run_dir))["config"]
        ckpt.check_resume_config(saved, to_dict(cfg))  # before loading: a clear message, not a shape error
        state = ckpt.load_checkpoint(run_dir, model, optimizer, schedule, map_location=ctx.device, restore_rng=True)
        loader.load_state_dict(state["data_state"])
        start = state["step"]
        saved_best = (state.get("metrics") or {}).get("best_val_loss")
        best = math.inf if saved_best is None else saved_best
        if gns is not None and (state.get("metrics") or {}).get("gns_state"):
            gns.load_state_dict(state["metrics"]["gns_state"])
        log.info("resumed %s at step %d", run_dir, start)
    if ctx.main:
        with atomic_write(run_dir / "config.toml", "w", encoding="utf-8") as f:
            f.write(to_toml(cfg))
    fwd_model = model
    if ctx.world > 1:
        from scratchlm.distributed.ddp import wrap_ddp

        fwd_model = wrap_ddp(model, ctx.device)
    if cfg.compile:
        fwd_model = torch.compile(fwd_model)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.precision == "fp16")

    metrics = MetricsLogger(run_dir, to_dict(cfg), cfg.wandb, cfg.tensorboard) if ctx.main else None
    evaluator = Evaluator(cfg, valid, tokenizer, ctx)
    train_flops = flops_per_token(cfg.model, cfg.context)["train"]
    peak, peak_source = peak_flops(ctx.device, cfg.precision)
    if ctx.main:
        n = sum(p.numel() for p in model.parameters())
        log.info(
            "model %.2fM params | %d tokens/step | %.3g train FLOPs/token | peak %.3g FLOP/s (%s)",
            n / 1e6, cfg.tokens_per_step * ctx.world, train_flops, peak, peak_source,
        )  # fmt: skip

    def save(step: int, extra: dict, is_best: bool = False) -> None:
        if ctx.main:
            extra = {**extra, "best_val_loss": best, "gns_state": gns.state_dict() if gns else None}
            ckpt.save_checkpoint(
                run_dir, step, model, optimizer, schedule, loader.state_dict(), to_dict(cfg),
                extra, keep_last=cfg.keep_last, is_best=is_best,
            )  # fmt: skip

    def evaluate(step: int) -> dict:
        nonlocal best
        result = evaluator.loss(model)
        is_best = "val_loss" in result and result["val_loss"] < best
        if is_best:
            best = result["val_loss"]
        if ctx.main:
            samples = evaluator.samples(model, step)
            metrics.log({"kind": "eval", "step": step, "tokens": step * cfg.tokens_per_step * ctx.world, **result})
            if samples:
                with open(run_dir / "samples.txt", "a", encoding="utf-8") as f:
                    f.write(f"=== step {step} ===\n" + "\n---\n".join(samples) + "\n")
            shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float))
            print(f"eval step {step}: {shown}" + "".join(f"\n  > {s[:200]!r}" for s in samples), flush=True)
        save(step, result, is_best)
        return result

    # ---- the loop
    model.train()
    t_start = time.perf_counter()
    t_log, tokens_since_log = t_start, 0
    done, loss_value, stopped = start, None, "steps"
    for step in range(start, cfg.steps):
        lr = schedule.step(step)
        loss_sum = 0.0
        xs, ys = loader.next()  # (batch_size * grad_accum, T): this rank's rows of the step's draw
        for micro in range(cfg.grad_accum):
            rows = slice(micro * cfg.batch_size, (micro + 1) * cfg.batch_size)
            x, y = xs[rows].to(ctx.device), ys[rows].to(ctx.device)
            sync = micro == cfg.grad_accum - 1 or ctx.world == 1
            with contextlib.nullcontext() if sync else fwd_model.no_sync(), autocast_context(cfg.precision, ctx.device):
                if cfg.model.fused_loss:  # chunked head + loss: the (tokens x V) logits never exist
                    loss = fwd_model(x, targets=y)
                else:
                    loss, _ = lm_loss(fwd_model(x), y, cfg.optim.z_loss)
                loss = loss + model.aux_loss()
            scaler.scale(loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
            if gns is not None and micro == 0:  # the gradient of one micro-batch, unscaled
                sq_small = grad_sq_norm(model.parameters()) * (cfg.grad_accum / scaler.get_scale()) ** 2
        loss_value = float(loss_sum) / cfg.grad_accum
        if ctx.world > 1:  # log the global mean, which equals the 1-process loss
            from scratchlm.distributed.ddp import all_reduce_mean

            loss_value = all_reduce_mean(loss_value, ctx.device)
        if not math.isfinite(loss_value):
            latest = run_dir / "checkpoints"
            raise ScratchLMError(
                f"non-finite loss ({loss_value}) at step {step}: stopping. The last good checkpoint is kept in "
                f"{latest} (resume with a lower optim.lr or more warmup)"
            )
        scaler.unscale_(optimizer)
        if gns is not None:
            sq_big = grad_sq_norm(model.parameters())
            if math.isfinite(sq_small) and math.isfinite(sq_big):  # fp16 overflow steps are skipped
                gns.update(sq_small, sq_big)
        grad_norm = clip_grad_norm(model.parameters(), cfg.optim.grad_clip) if cfg.optim.grad_clip > 0 else None
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        tokens_since_log += cfg.tokens_per_step * ctx.world
        done = step + 1

        if ctx.main and (done % cfg.log_every == 0 or done == cfg.steps):
            now = time.perf_counter()
            tps = tokens_since_log / max(now - t_log, 1e-9)
            mfu = tps * train_flops / peak if peak else 0.0
            eta = (cfg.steps - done) * cfg.tokens_per_step * ctx.world / max(tps, 1e-9)
            record = {"kind": "train", "step": done, "tokens": done * cfg.tokens_per_step * ctx.world}
            # cpu_s: this process's CPU time; its ratio to wall time shows a machine shared with other work
            record.update(loss=loss_value, lr=lr, tokens_per_s=tps, mfu=mfu, cpu_s=round(time.process_time(), 3))
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            if gns is not None:
                record.update(gns.value())
            metrics.log(record)
            if progress:
                print(format_progress(done, cfg.steps, loss_value, lr, tps, mfu, eta), flush=True)
            t_log, tokens_since_log = now, 0
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            last_eval = evaluate(done)
        elif cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
            save(done, {})
        if cfg.time_limit_s and time.perf_counter() - t_start > cfg.time_limit_s:
            stopped = "time_limit"
            break

    train_seconds = time.perf_counter() - t_start  # the loop, with its periodic evals; without the last one
    last_eval = evaluate(done)
    elapsed = time.perf_counter() - t_start
    summary = {
        "steps": done,
        "stopped": stopped,
        "tokens": done * cfg.tokens_per_step * ctx.world,
        "seconds": round(elapsed, 2),
        "train_seconds": round(train_seconds, 2),
        "params": sum(p.numel() for p in model.parameters()),
        "train_flops_per_token": train_flops,
        "final_loss": loss_value,
        "best_val_loss": best if math.isfinite(best) else None,
        **last_eval,
        "run_dir": str(run_dir),
    }
    if ctx.main:
        write_json(run_dir / "summary.json", summary)
        plot_loss_curve(run_dir)
        metrics.close()
    if ctx.world > 1:
        from scratchlm.distributed.ddp import cleanup

        cleanup()
    return summary
