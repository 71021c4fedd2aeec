"""Logit distillation: the loss math (hand-computed, against torch's kl_div), top-k = full at k = V, the top-k
cache round trip, DistillLoss through train_step, config plumbing into a tiny run, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.config import load_config
from scratchlm.errors import ScratchLMError
from scratchlm.model import TransformerLM
from scratchlm.model.config import ModelConfig
from scratchlm.model.model_dir import save_model_dir
from scratchlm.tokenizer import load_tokenizer
from scratchlm.tokenizer.chat import ChatTokenizer
from scratchlm.tokenizer.token_file import write_token_file
from scratchlm.train.config import DistillConfig, TrainConfig
from scratchlm.train.data import IGNORE_INDEX, RandomWindows, TokenData
from scratchlm.train.distill import (
    DistillLoss,
    DistillTargets,
    TopKCache,
    distill_loss,
    teacher_topk,
    topk_distill_loss,
    write_topk_cache,
)
from scratchlm.train.loop import train
from scratchlm.train.step import train_step

KINDS = ("forward", "reverse", "mix")

# ---------------------------------------------------------------------------------------------
# the pure losses


def test_hand_computed_two_token_case():
    """p = (1/2, 1/2), q = (1/4, 3/4): KL(p||q) = 1/2 ln(4/3), KL(q||p) = 1/4 ln(1/2) + 3/4 ln(3/2)."""
    teacher = torch.tensor([[[0.0, 0.0], [5.0, -1.0]]])  # (1, 2, 2); the second position is masked out
    student = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    y = torch.tensor([[1, IGNORE_INDEX]])
    fwd, rev = 0.5 * math.log(4 / 3), 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert distill_loss(student, teacher, y, "forward").item() == pytest.approx(fwd, abs=1e-6)
    assert distill_loss(student, teacher, y, "reverse").item() == pytest.approx(rev, abs=1e-6)
    assert distill_loss(student, teacher, y, "mix", beta=0.25).item() == pytest.approx(0.75 * fwd + 0.25 * rev, 1e-6)
    # the same distributions at temperature 2 (logits doubled), times 2^2
    assert distill_loss(2 * student, 2 * teacher, y, "forward", 2.0).item() == pytest.approx(4 * fwd, abs=1e-5)
    # every position masked: 0, not NaN
    assert distill_loss(student, teacher, torch.full_like(y, IGNORE_INDEX)).item() == 0.0


@pytest.mark.parametrize("tau", [1.0, 0.7, 3.0])
def test_matches_torch_kl_div(tau):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g) * 3, torch.randn(2, 5, 11, generator=g) * 3
    y = torch.randint(0, 11, (2, 5), generator=g)
    y[1, 3:] = IGNORE_INDEX
    keep = y != IGNORE_INDEX
    logq, logp = F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1)
    fwd = F.kl_div(logq, logp, reduction="none", log_target=True).sum(-1)[keep].mean() * tau**2
    rev = F.kl_div(logp, logq, reduction="none", log_target=True).sum(-1)[keep].mean() * tau**2
    torch.testing.assert_close(distill_loss(s, t, y, "forward", tau), fwd)
    torch.testing.assert_close(distill_loss(s, t, y, "reverse", tau), rev)
    torch.testing.assert_close(distill_loss(s, t, y, "mix", tau, beta=0.3), 0.7 * fwd + 0.3 * rev)


def test_tau_squared_keeps_the_gradient_scale():
    """d/ds [tau^2 KL(p||q)] = tau (q - p) / positions: the tau^2 of Hinton et al. undoes the 1/tau^2 shrink."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 4, 7, generator=g).requires_grad_(), torch.randn(1, 4, 7, generator=g)
    y = torch.zeros(1, 4, dtype=torch.long)
    tau = 2.5
    distill_loss(s, t, y, "forward", tau).backward()
    want = tau * (F.softmax(s.detach() / tau, -1) - F.softmax(t / tau, -1)) / 4
    torch.testing.assert_close(s.grad, want)
    for kind in KINDS:  # identical distributions: zero loss
        assert distill_loss(t, t, y, kind, tau).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_topk_at_k_equal_v_is_the_full_loss(kind):
    g = torch.Generator().manual_seed(2)
    s, t = (torch.randn(2, 3, 13, generator=g) * 2).requires_grad_(), torch.randn(2, 3, 13, generator=g) * 2
    y = torch.randint(0, 13, (2, 3), generator=g)
    y[0, 0] = IGNORE_INDEX
    full = distill_loss(s, t, y, kind, 1.5)
    (g_full,) = torch.autograd.grad(full, s)
    top = topk_distill_loss(s, teacher_topk(t, 13, 1.5), y, kind, 1.5)
    (g_top,) = torch.autograd.grad(top, s)
    torch.testing.assert_close(top, full)
    torch.testing.assert_close(g_top, g_full)
    assert torch.isfinite(g_top).all()


def test_topk_below_v_is_the_bucketed_kl():
    """k < V: the KL of the (k tokens + one rest bucket) distributions, a lower bound of the full KL."""
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(1, 6, 20, generator=g), torch.randn(1, 6, 20, generator=g)
    y = torch.zeros(1, 6, dtype=torch.long)
    top = teacher_topk(t, 4)
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    inside = torch.zeros_like(p).scatter(-1, top.indices, 1.0).bool()
    pb = torch.cat([p.gather(-1, top.indices), (p * ~inside).sum(-1, keepdim=True)], -1)  # (1, 6, 5)
    qb = torch.cat([q.gather(-1, top.indices), (q * ~inside).sum(-1, keepdim=True)], -1)
    want = (pb * (pb.log() - qb.log())).sum(-1).mean()
    got = topk_distill_loss(s, top, y, "forward")
    torch.testing.assert_close(got, want)
    assert got < distill_loss(s, t, y, "forward")
    torch.testing.assert_close(top.rest.exp(), 1 - top.logprobs.exp().sum(-1))


def test_bad_loss_arguments():
    s = torch.randn(1, 2, 5)
    y = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ScratchLMError, match="temperature must be > 0"):
        distill_loss(s, s, y, "forward", 0.0)
    with pytest.raises(ScratchLMError, match="unknown distillation kind 'jsd'"):
        distill_loss(s, s, y, "jsd")
    with pytest.raises(ScratchLMError, match="same batch, length and vocabulary"):
        distill_loss(s, torch.randn(1, 2, 6), y)
    with pytest.raises(ScratchLMError, match="1 <= k <= the vocabulary size 5"):
        teacher_topk(s, 6)
    with pytest.raises(ScratchLMError, match="alpha must be in"):
        DistillLoss(DistillConfig(alpha=1.5), teacher=torch.nn.Linear(1, 1))


# ---------------------------------------------------------------------------------------------
# tiny models, token files, caches


def tiny_model(vocab: int, seed: int, d_model: int = 32) -> TransformerLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, context_length=64, d_model=d_model, n_layers=2, n_heads=4)
    return TransformerLM(cfg).eval()


@pytest.fixture(scope="module")
def small_tokens(tiny_data, tmp_path_factory):
    """A 2,000-token slice of the tiny training file (same tokenizer), for caches."""
    path = tmp_path_factory.mktemp("distill") / "small.bin"
    ids = TokenData(tiny_data["train"]).tokens[:2000]
    write_token_file(ids, path, tokenizer=str(tiny_data["tokenizer"]))
    return path


@pytest.fixture(scope="module")
def teacher_dir(tiny_data, tmp_path_factory):
    """A teacher model directory: a tiny model trained for a few steps on the tiny corpus, its tokenizer."""
    d = tmp_path_factory.mktemp("teacher")
    cfg = load_config(
        TrainConfig, "train", "debug",
        [f"out_dir={json.dumps(str(d / 'run'))}", "steps=40", "eval_every=0", "sample_tokens=0", "log_every=40"],
        base={"data": {"train": str(tiny_data["train"])}, "model": {"vocab_size": tiny_data["vocab_size"]}},
    )  # fmt: skip
    train(cfg, progress=False)
    from scratchlm.model.model_dir import load_model

    model, chat = load_model(d / "run")
    return save_model_dir(model, chat, d / "model")


def test_cache_round_trip(tiny_data, small_tokens, tmp_path):
    vocab = tiny_data["vocab_size"]
    teacher = tiny_model(vocab, seed=0)
    meta = write_topk_cache(teacher, small_tokens, tmp_path / "c", k=8, temperature=2.0, seq_len=48, batch_size=5,
                            teacher_name="tiny", progress=False)  # fmt: skip
    assert meta["positions"] == 1999 and meta["k"] == 8 and meta["temperature"] == 2.0
    cache = TopKCache(tmp_path / "c", tokens=small_tokens, temperature=2.0)
    tokens = torch.from_numpy(TokenData(small_tokens).tokens[:].astype("int64"))
    starts = [0, 48 * 7, 48 * 40]  # windows aligned to the writer's: the teacher saw the same context
    got = cache.windows(starts, 48)
    assert got.logprobs.shape == (3, 48, 8) and got.rest.shape == (3, 48)
    with torch.no_grad():
        want = teacher_topk(teacher(torch.stack([tokens[s : s + 48] for s in starts]), output="logits"), 8, 2.0)
    torch.testing.assert_close(got.logprobs, want.logprobs)
    torch.testing.assert_close(got.indices.long(), want.indices)
    torch.testing.assert_close(got.rest, want.rest)
    tail = cache.windows([1999 - 48], 48)  # the last window: the short last chunk of the writer
    assert torch.isfinite(tail.logprobs).all()
    with pytest.raises(ScratchLMError, match="outside the 1999 cached positions"):
        cache.windows([1999 - 47], 48)
    with pytest.raises(ScratchLMError, match="temperature 2.0, not 1.0"):
        TopKCache(tmp_path / "c", temperature=1.0)
    with pytest.raises(ScratchLMError, match="another token file"):
        TopKCache(tmp_path / "c", tokens=tiny_data["valid"])
    with pytest.raises(ScratchLMError, match="already exists"):
        write_topk_cache(teacher, small_tokens, tmp_path / "c", k=8, progress=False)


def test_cache_writer_rejects_bad_input_and_writes_nothing(tiny_data, small_tokens, tmp_path):
    vocab = tiny_data["vocab_size"]
    with pytest.raises(ScratchLMError, match="vocab_size 64 but the student"):
        write_topk_cache(tiny_model(64, 0), small_tokens, tmp_path / "a", progress=False)
    with pytest.raises(ScratchLMError, match="1 <= k <= the vocabulary size"):
        write_topk_cache(tiny_model(vocab, 0), small_tokens, tmp_path / "a", k=vocab + 1, progress=False)
    with pytest.raises(ScratchLMError, match="temperature must be > 0"):
        write_topk_cache(tiny_model(vocab, 0), small_tokens, tmp_path / "a", temperature=-1, progress=False)
    with pytest.raises(ScratchLMError, match="another tokenizer"):
        write_topk_cache(tiny_model(vocab, 0), small_tokens, tmp_path / "a", teacher_tokenizer_hash="ab" * 32,
                         progress=False)  # fmt: skip
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------------------------
# DistillLoss through train_step


@pytest.mark.parametrize("cached", [False, True])
def test_distill_loss_through_train_step_lowers_the_kl(tiny_data, small_tokens, tmp_path, cached):
    vocab = tiny_data["vocab_size"]
    teacher, student = tiny_model(vocab, seed=0), tiny_model(vocab, seed=1).train()
    cfg = DistillConfig(teacher="tiny", temperature=2.0, alpha=1.0)
    if cached:
        write_topk_cache(teacher, small_tokens, tmp_path / "c", k=vocab, temperature=2.0, seq_len=32, progress=False)
        loss_fn = DistillLoss(cfg, cache=TopKCache(tmp_path / "c", small_tokens))
    else:
        loss_fn = DistillLoss(cfg, teacher=teacher)
    loader = RandomWindows(TokenData(small_tokens), batch_size=4, seq_len=32, seed=0)
    x, y = loader.batch(0)
    batch = loss_fn.batch_targets(x, y, loader.starts(0))
    assert isinstance(batch, DistillTargets) and (batch.topk is not None) == cached
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    kds = []
    for step in range(12):
        result = train_step(student, [(x[:2], batch[:2]), (x[2:], batch[2:])], loss_fn, opt, None, step=step)
        kds.append(float(result.parts["kd"]))
        assert set(result.parts) == {"kd", "ce"} and result.loss == pytest.approx(kds[-1], rel=1e-5)  # alpha = 1
    assert kds[-1] < 0.7 * kds[0]
    with torch.no_grad():  # the parts are the pure losses on the whole batch (k = V: cache == live teacher)
        kd = distill_loss(student(x, output="logits"), teacher(x, output="logits"), y, "forward", 2.0)
    assert float(kd) < kds[0]
    with pytest.raises(ScratchLMError, match="needs DistillTargets"):
        loss_fn(student(x, output="logits"), y, student)


# ---------------------------------------------------------------------------------------------
# config plumbing: scratchlm train --set loss=distill --set distill.teacher=...


def run_cfg(tiny_data, tmp_path, *overrides, name="run") -> TrainConfig:
    base = {
        "out_dir": str(tmp_path / name),
        "data": {"train": str(tiny_data["train"]), "valid": str(tiny_data["valid"])},
        "model": {"vocab_size": tiny_data["vocab_size"]},
    }
    sets = ["steps=12", "eval_every=0", "sample_tokens=0", "log_every=4", "noise_scale=false", *overrides]
    return load_config(TrainConfig, "train", "debug", sets, base=base)


def train_records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_train_run_with_loss_distill(tiny_data, teacher_dir, tmp_path):
    cfg = run_cfg(tiny_data, tmp_path, "loss=distill", f"distill.teacher={teacher_dir}", "distill.temperature=2",
                  "distill.alpha=0.7", "distill.kind=mix")  # fmt: skip
    assert cfg.distill.kind == "mix" and cfg.distill.alpha == 0.7
    summary = train(cfg, progress=False)
    records = train_records(tmp_path / "run")
    assert summary["steps"] == 12 and records[-1]["kd"] < records[0]["kd"]
    last = records[-1]
    assert last["loss"] == pytest.approx(0.7 * last["kd"] + 0.3 * last["ce"], rel=1e-5)
    assert "distill" in (tmp_path / "run" / "config.toml").read_text()


def test_train_run_from_a_topk_cache(tiny_data, teacher_dir, small_tokens, tmp_path):
    from scratchlm.model.model_dir import load_model

    teacher, chat = load_model(teacher_dir)
    write_topk_cache(teacher, small_tokens, tmp_path / "c", k=16, seq_len=32, teacher_name=str(teacher_dir),
                     teacher_tokenizer_hash=chat.tokenizer.hash, progress=False)  # fmt: skip
    cfg = run_cfg(tiny_data, tmp_path, "loss=distill", f"distill.topk_cache={tmp_path / 'c'}", "distill.alpha=1")
    cfg.data.train = str(small_tokens)
    train(cfg, progress=False)
    records = train_records(tmp_path / "run")
    assert records[-1]["kd"] < records[0]["kd"] and records[0]["loss"] == pytest.approx(records[0]["kd"], rel=1e-5)
    # the same cache against another token file, or at another temperature: an error before any run file
    for i, sets in enumerate([[], ["distill.temperature=2"], ["distill.teacher=smollm2-135m-instruct"]]):
        bad = run_cfg(tiny_data, tmp_path, "loss=distill", f"distill.topk_cache={tmp_path / 'c'}", *sets,
                      name=f"bad{i}")  # fmt: skip
        if sets:
            bad.data.train = str(small_tokens)
        with pytest.raises(ScratchLMError, match="another token file|temperature 1.0, not 2.0|is not the teacher"):
            train(bad, progress=False)
        assert not (tmp_path / f"bad{i}" / "config.toml").exists()


def test_bad_distill_configs(tiny_data, tmp_path):
    with pytest.raises(ScratchLMError, match="distill.temperature must be > 0"):
        run_cfg(tiny_data, tmp_path, "loss=distill", "distill.teacher=x", "distill.temperature=0")
    with pytest.raises(ScratchLMError, match=r"distill.alpha must be in \[0, 1\]"):
        run_cfg(tiny_data, tmp_path, "loss=distill", "distill.teacher=x", "distill.alpha=1.5")
    with pytest.raises(ScratchLMError, match="distill.temperature"):  # the unknown key names the nearest one
        run_cfg(tiny_data, tmp_path, "distill.temprature=2")
    with pytest.raises(ScratchLMError, match="distill.kind"):
        run_cfg(tiny_data, tmp_path, "distill.kind=jsd")
    with pytest.raises(ScratchLMError, match="needs distill.teacher"):
        run_cfg(tiny_data, tmp_path, "loss=distill")
    with pytest.raises(ScratchLMError, match="fused_loss"):
        run_cfg(tiny_data, tmp_path, "loss=distill", "distill.teacher=x", "model.fused_loss=true")
    with pytest.raises(ScratchLMError, match="teacher would see only this rank's part"):
        run_cfg(tiny_data, tmp_path, "loss=distill", "distill.teacher=x", "parallel.cp=2")


def test_teacher_of_another_vocabulary_is_an_error_before_any_run_file(tiny_data, tmp_path):
    wrong = tiny_model(tiny_data["vocab_size"] + 64, seed=0)
    chat = ChatTokenizer.plain(load_tokenizer(tiny_data["tokenizer"]))
    save_model_dir(wrong, chat, tmp_path / "wrong")
    cfg = run_cfg(tiny_data, tmp_path, "loss=distill", f"distill.teacher={tmp_path / 'wrong'}")
    with pytest.raises(ScratchLMError, match="same tokenizer"):
        train(cfg, progress=False)
    assert not (tmp_path / "run" / "config.toml").exists()
