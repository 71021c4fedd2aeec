"""The Trainer: sets a run up and orchestrates it; the work is done by the pieces it calls.

    summary = Trainer(cfg, resume=False).run()       # = scratchlm.train.loop.train(cfg)

    setup  init_distributed -> Mesh (distributed/mesh.py); the run directory; token files and tokenizer;
           the model (seeded), parallelize (cfg.parallel: tensor parallel, activation checkpointing, compile,
           FSDP2 or DDP: distributed/parallelize.py); sharded runs gather their state into the usual checkpoints,
           optimizer + lr schedule, TrainState (state.py), restored from the last checkpoint on resume
           (checkpoint.py), the loss chosen once (losses.py), metrics logger, Evaluator (evaluator.py)
    loop   per step: the step's batch from the loader, split into `grad_accum` micro-batches -> train_step
           (step.py: forward, loss, backward, clip, optimizer + schedule step); a non-finite loss stops the
           run (the last good checkpoint stays); log every `log_every`; every `eval_every` evaluate and
           checkpoint (the best kept); checkpoint every `checkpoint_every`; stop at `time_limit_s`
    end    a last evaluation + checkpoint, summary.json, loss.png

Only rank 0 writes files and prints; every rank trains, evaluates and sees the same summary.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import time
from pathlib import Path

import torch
from torch import Tensor

from scratchlm.config import to_dict, to_toml
from scratchlm.distributed.mesh import destroy_distributed, init_distributed, peer_failures
from scratchlm.distributed.parallelize import is_sharded, parallelize
from scratchlm.errors import ScratchLMError
from scratchlm.io import DirLock, atomic_write, check_writable, write_json
from scratchlm.model import TransformerLM
from scratchlm.model.accounting import flops_per_token
from scratchlm.tokenizer import load_tokenizer
from scratchlm.train.checkpoint import (
    check_resume_config,
    find_checkpoint,
    load_train_state,
    read_checkpoint_meta,
    save_train_state,
)
from scratchlm.train.config import TrainConfig
from scratchlm.train.data import RandomWindows, TokenData
from scratchlm.train.evaluator import Evaluator
from scratchlm.train.losses import build_loss
from scratchlm.train.metrics import MetricsLogger, format_progress, peak_flops, plot_loss_curve, truncate_metrics
from scratchlm.train.noise_scale import NoiseScale
from scratchlm.train.optim import build_optimizer
from scratchlm.train.schedules import Schedule
from scratchlm.train.state import TrainState
from scratchlm.train.step import StepResult, train_step

log = logging.getLogger(__name__)

RUN_FILES = ("checkpoints", "metrics.jsonl", "loss.png", "summary.json", "samples.txt")  # replaced by --force


def prepare_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> Path:
    """The run directory, created; an existing run in it is an error unless resuming or `overwrite`."""
    run_dir = Path(cfg.out_dir)
    has_run = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if has_run and not resume:
        if not overwrite:
            raise ScratchLMError(f"{run_dir} already holds a run: pass --resume {run_dir}, another out_dir, or --force")
        for name in RUN_FILES:
            p = run_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def open_data(
    cfg: TrainConfig, train_data: TokenData | None = None, valid_data: TokenData | None = None
) -> tuple[TokenData, TokenData | None, object | None]:
    """(train, valid or None, tokenizer or None), checked before any work: missing files, vocab mismatch,
    a validation file of another tokenizer. `train_data` / `valid_data` (e.g. in-memory ids) replace the
    files `cfg.data.train` / `cfg.data.valid`."""
    if train_data is None:
        if not cfg.data.train:
            raise ScratchLMError("data.train is empty: give a token file (scratchlm tokenizer encode ...)")
        train_data = TokenData(cfg.data.train)
    train_data.check_vocab(cfg.model.vocab_size)
    valid = valid_data
    train_hash = train_data.meta.get("tokenizer_hash")
    if valid is None and cfg.data.valid:
        valid = TokenData(cfg.data.valid, expect_tokenizer_hash=train_hash)
    elif valid is not None and None not in (train_hash, valid.tokenizer_hash) and valid.tokenizer_hash != train_hash:
        raise ScratchLMError(f"the validation data {valid.name} was made by another tokenizer than the training data")
    if valid is not None:
        valid.check_vocab(cfg.model.vocab_size)
    tok_path = cfg.data.tokenizer or train_data.meta.get("tokenizer")
    tokenizer = load_tokenizer(tok_path) if tok_path and Path(tok_path).exists() else None
    return train_data, valid, tokenizer


class Trainer:
    """One training run per `cfg`: `Trainer(cfg, resume, overwrite, progress).run() -> summary dict`.

    `train_data` / `valid_data` (TokenData, e.g. `TokenData(ids, vocab_size=V)` of ids made in Python) are
    used instead of the files `cfg.data.train` / `cfg.data.valid`; a resume must pass the same ones again."""

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        train_data: TokenData | None = None,
        valid_data: TokenData | None = None,
    ):
        self.cfg, self.progress = cfg, progress
        self._data = train_data, valid_data
        self.mesh = mesh = init_distributed(cfg)
        self.metrics = None
        if mesh.main:  # a read-only or impossible run directory: say so before loading data or building the model
            check_writable(Path(cfg.out_dir) / "config.toml", "run directory")
        # One writer per run directory: a second `scratchlm train` on the same out_dir stops here.
        self.lock = DirLock(cfg.out_dir, "a training run").acquire() if mesh.main else None
        try:
            self._setup(cfg, resume, overwrite)
        except BaseException:
            self.close()
            raise

    def _setup(self, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
        mesh = self.mesh
        # the loss first: a distillation teacher or cache that does not fit the run fails before any run file
        self.loss_fn = build_loss(cfg)
        self.run_dir = prepare_run_dir(cfg, resume, overwrite) if mesh.main else Path(cfg.out_dir)
        train_data, valid, tokenizer = open_data(cfg, *self._data)
        # One draw per optimizer step of dp x batch_size x grad_accum windows, fixed by (seed, step): this
        # replica's rows are split into its micro-batches, so any split of the global batch over processes
        # and accumulation sees the same data.
        rows = cfg.batch_size * cfg.grad_accum
        loader = RandomWindows(train_data, rows, cfg.context, cfg.seed, mesh.dp_rank, mesh.dims.dp)
        self.tokens_per_step = cfg.tokens_per_step * mesh.dims.dp

        torch.manual_seed(cfg.seed)
        model = TransformerLM(cfg.model).to(mesh.device)
        self.pipe = None
        if mesh.dims.pp > 1:  # this rank runs one stage through a pipeline schedule (distributed/pipeline_train.py)
            from scratchlm.distributed.pipeline_train import PipelineRun

            self.fwd_model = parallelize(model, cfg, mesh)  # activation checkpointing / compile per block only
            self.pipe = PipelineRun(model, cfg, mesh, self.loss_fn)
        else:
            self.fwd_model = parallelize(model, cfg, mesh)
        # FSDP2 / tensor parallel: DTensor parameters; checkpoints gather them (distributed/dcp.py), and what runs
        # on rank 0 alone (samples) or reads per-parameter gradients (the noise scale) is left out
        self.sharded = is_sharded(model)
        optimizer = build_optimizer(model, cfg.optim)
        schedule = Schedule(optimizer, cfg.schedule, cfg.steps)
        # small batch = this process's first micro-batch, big batch = the whole step (see noise_scale.py)
        gns = None
        if cfg.noise_scale and cfg.grad_accum > 1 and not self.sharded and self.pipe is None:
            gns = NoiseScale(cfg.batch_size * cfg.context, self.tokens_per_step)
        if self.sharded:
            from scratchlm.distributed.dcp import ShardedTrainState

            self.state = ShardedTrainState(model, optimizer, schedule, loader, noise_scale=gns)
        else:
            self.state = TrainState(model, optimizer, schedule, loader, noise_scale=gns)
        if resume:
            self.restore()
        if mesh.main:
            with atomic_write(self.run_dir / "config.toml", "w", encoding="utf-8") as f:
                f.write(to_toml(cfg))

        self.scaler = torch.amp.GradScaler(mesh.device.type, enabled=cfg.precision == "fp16")
        self.grad_hook = functools.partial(gns.observe, list(model.parameters())) if gns else None
        self.metrics = MetricsLogger(self.run_dir, to_dict(cfg), cfg.wandb, cfg.tensorboard) if mesh.main else None
        self.evaluator = Evaluator(cfg, valid, tokenizer, mesh.device, self.shard, mesh.sub_mesh("cp"))
        self.train_flops = flops_per_token(cfg.model, cfg.context)["train"]
        self.peak, peak_source = peak_flops(mesh.device, cfg.precision)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.t_start = self.t_log = 0.0  # perf_counter at the loop's start / the last train log (set by run)
        self.tokens_since_log = 0
        if mesh.main:
            log.info(
                "model %.2fM params | %d tokens/step | %.3g train FLOPs/token | peak %.3g FLOP/s (%s)",
                self.n_params / 1e6, self.tokens_per_step, self.train_flops, self.peak, peak_source,
            )  # fmt: skip

    # ---- setup pieces

    def shard(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's part of a batch: all of it, or under context parallel its chunks of every sequence (the
        model, whose attention is the ring, gives them their global positions; distributed/ring_attention.py)."""
        if self.mesh.dims.cp == 1:
            return x, y
        from scratchlm.distributed.ring_attention import shard_sequence

        group = self.mesh.sub_mesh("cp")
        return shard_sequence(x, group), shard_sequence(y, group)  # (B, T / cp) each

    def restore(self) -> None:
        """Continue from the run's latest checkpoint (config checked first: a clear message, not a shape error)."""
        # the config only: the file hashes are verified once, by load_train_state
        saved = read_checkpoint_meta(find_checkpoint(self.run_dir), verify=False)["config"]
        # batch_size is per process: a new layout keeps the global batch with another one (the data stream
        # checks that the global batch is unchanged)
        check_resume_config(saved, to_dict(self.cfg), allow=("batch_size",))
        load_train_state(self.run_dir, self.state, map_location=self.mesh.device, restore_rng=True)
        if self.mesh.main:  # the steps after the checkpoint are trained again: their old records go
            truncate_metrics(self.run_dir, self.state.step)
        log.info("resumed %s at step %d", self.run_dir, self.state.step)

    # ---- the loop

    def run(self) -> dict:
        """Train from `state.step` to `cfg.steps` (or the time limit), evaluate, write the summary."""
        cfg, state = self.cfg, self.state
        state.model.train()
        self.t_start = self.t_log = time.perf_counter()
        self.tokens_since_log = 0
        result, stopped = None, "steps"
        for step in range(state.step, cfg.steps):
            result = self.run_step(step)
            state.step = step + 1
            self.tokens_since_log += self.tokens_per_step
            if self.mesh.main and (state.step % cfg.log_every == 0 or state.step == cfg.steps):
                self.log_train(result)
            if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < cfg.steps:
                self.evaluate()
            elif cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                self.save({})
            if cfg.time_limit_s and time.perf_counter() - self.t_start > cfg.time_limit_s:
                stopped = "time_limit"
                break
        train_seconds = time.perf_counter() - self.t_start  # the loop, with its periodic evals; without the last one
        last_eval = self.evaluate()
        return self.finish(result, stopped, train_seconds, last_eval)

    def run_step(self, step: int) -> StepResult:
        """Step `step` on this replica's rows of the step's draw; a non-finite loss stops the run."""
        cfg, device = self.cfg, self.mesh.device
        index = self.state.loader.next_index
        xs, ys = self.state.loader.next()  # (batch_size * grad_accum, T)
        if hasattr(self.loss_fn, "batch_targets"):  # distillation: targets + the inputs or the cached teacher top-k
            ys = self.loss_fn.batch_targets(xs, ys, self.state.loader.starts(index))
        rows = [slice(m * cfg.batch_size, (m + 1) * cfg.batch_size) for m in range(cfg.grad_accum)]
        batches = [self.shard(xs[r].to(device), ys[r].to(device)) for r in rows]  # grad_accum x (B, T [/ cp])
        with peer_failures(cfg.parallel.timeout_s):  # a dead rank: a clear error here, not a hang
            result = self._train_step(batches, step)
        if not result.finite:
            raise ScratchLMError(
                f"non-finite loss ({result.loss}) at step {step}: stopping. The last good checkpoint is kept in "
                f"{self.run_dir / 'checkpoints'} (resume with a lower optim.lr or more warmup)"
            )
        return result

    def _train_step(self, batches, step: int) -> StepResult:
        cfg = self.cfg
        if self.pipe is not None:
            return self.pipe.step(batches, self.state.optimizer, self.state.schedule, step=step)
        return train_step(
            self.fwd_model, batches, self.loss_fn, self.state.optimizer, self.state.schedule, step=step,
            precision=cfg.precision, grad_clip=cfg.optim.grad_clip, scaler=self.scaler, grad_hook=self.grad_hook,
        )  # fmt: skip

    def log_train(self, result: StepResult) -> None:
        """One metrics.jsonl record (and a progress line) for the steps since the last one."""
        cfg, done = self.cfg, self.state.step
        now = time.perf_counter()
        tps = self.tokens_since_log / max(now - self.t_log, 1e-9)
        mfu = tps * self.train_flops / self.peak if self.peak else 0.0
        eta = (cfg.steps - done) * self.tokens_per_step / max(tps, 1e-9)
        record = {"kind": "train", "step": done, "tokens": done * self.tokens_per_step}
        # cpu_s: this process's CPU time; its ratio to wall time shows a machine shared with other work
        record.update(loss=result.loss, lr=result.lr, tokens_per_s=tps, mfu=mfu, cpu_s=round(time.process_time(), 3))
        if result.grad_norm is not None:
            record["grad_norm"] = result.grad_norm
        record.update({k: float(v) for k, v in result.parts.items() if k not in record})  # the loss's parts (ce, kd)
        if self.state.noise_scale is not None:
            record.update(self.state.noise_scale.value())
        self.metrics.log(record)
        if self.progress:
            print(format_progress(done, cfg.steps, result.loss, result.lr, tps, mfu, eta), flush=True)
        self.t_log, self.tokens_since_log = now, 0

    def evaluate(self) -> dict:
        """Validation loss, then a checkpoint (marked best if it is), then samples on rank 0, logged. The
        checkpoint comes before the samples so that nothing that goes wrong while sampling costs trained steps."""
        state, step = self.state, self.state.step
        if self.pipe is not None:  # every rank evaluates (and rank 0 saves) the whole model: gather the stages
            self.pipe.gather(state.optimizer)
        result = self.evaluator.loss(state.model)
        is_best = "val_loss" in result and result["val_loss"] < state.best_val_loss
        if is_best:
            state.best_val_loss = result["val_loss"]
        self.save(result, is_best, gathered=True)
        if self.mesh.main:
            self.metrics.log({"kind": "eval", "step": step, "tokens": step * self.tokens_per_step, **result})
            samples = [] if self.sharded or self.pipe else self.evaluator.samples(state.model, step)
            if samples:
                with open(self.run_dir / "samples.txt", "a", encoding="utf-8") as f:
                    f.write(f"=== step {step} ===\n" + "\n---\n".join(samples) + "\n")
            shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float))
            print(f"eval step {step}: {shown}" + "".join(f"\n  > {s[:200]!r}" for s in samples), flush=True)
        return result

    def save(self, metrics: dict, is_best: bool = False, gathered: bool = False) -> None:
        if self.sharded:  # every rank takes part in gathering the full state; rank 0 writes it
            self.state.gather()
        if self.pipe is not None and not gathered:
            self.pipe.gather(self.state.optimizer)
        if self.mesh.main:
            save_train_state(
                self.run_dir, self.state, to_dict(self.cfg), metrics, keep_last=self.cfg.keep_last, is_best=is_best
            )

    # ---- the end

    def finish(self, last: StepResult | None, stopped: str, train_seconds: float, last_eval: dict) -> dict:
        """The summary (returned on every rank; summary.json and loss.png by rank 0)."""
        state = self.state
        summary = {
            "steps": state.step,
            "stopped": stopped,
            "tokens": state.step * self.tokens_per_step,
            "seconds": round(time.perf_counter() - self.t_start, 2),
            "train_seconds": round(train_seconds, 2),
            "params": self.n_params,
            "train_flops_per_token": self.train_flops,
            "final_loss": last.loss if last is not None else None,
            "best_val_loss": state.best_val_loss if math.isfinite(state.best_val_loss) else None,
            **last_eval,
            "run_dir": str(self.run_dir),
        }
        if self.mesh.main:
            write_json(self.run_dir / "summary.json", summary)
            plot_loss_curve(self.run_dir)
        return summary

    def close(self) -> None:
        """Close the metrics logger and leave the process group (also after an error)."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.mesh.world > 1:
            destroy_distributed()
