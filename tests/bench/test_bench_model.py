"""`scratchlm bench model`: end-to-end runs on a tiny model, FLOPs / MFU against hand counts, bad input."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from scratchlm.bench.model import (
    CS336_SIZES,
    ModelBenchConfig,
    bench_model_config,
    measure_matmul_peak,
    mfu,
    model_flops_per_step,
    run_model_bench,
    summarize,
)
from scratchlm.cli import main
from scratchlm.errors import ScratchLMError

TINY = ["--preset", "debug", "--batch", "2", "--seq-len", "16", "--warmup", "1", "--steps", "2", "--peak-n", "128"]
PHASES = {"fwd": {"forward"}, "fwd_bwd": {"forward", "backward"}, "step": {"forward", "backward", "optimizer"}}


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd", "step"])
def test_cli_runs_each_mode(mode, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "model", *TINY, "--mode", mode, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MFU" in printed and "tokens/s" in printed
    r = json.loads(out.read_text())
    assert len(r["times_s"]) == 2 and all(_positive(t) for t in r["times_s"])
    s = r["step_s"]
    assert all(_positive(s[k]) for k in ("mean", "median", "min", "max")) and s["std"] >= 0
    assert s["mean"] == pytest.approx(statistics.fmean(r["times_s"]))
    assert set(r["phases_s"]) == PHASES[mode]
    # the phases are timed inside the step: their sum cannot exceed it
    assert sum(v["mean"] for v in r["phases_s"].values()) <= s["mean"] * 1.001
    assert r["tokens_per_step"] == 32
    assert r["tokens_per_s"] == pytest.approx(32 / s["median"])
    cfg = bench_model_config("debug", 16)
    assert r["flops_per_step"] == model_flops_per_step(cfg, 2, 16, mode)
    assert _positive(r["peak_flops"]) and _positive(r["mfu"])
    assert r["mfu"] == pytest.approx(r["flops_per_step"] / s["median"] / r["peak_flops"])
    assert r["model"]["params"] == 139_584  # configs/model/debug.toml
    assert r["memory"]["peak_rss_bytes"] > 0


def test_profile_trace_top_ops_and_cpu_memory_record(tmp_path, capsys):
    prof, mem = tmp_path / "prof", tmp_path / "mem.json"
    args = ["bench", "model", *TINY, "--mode", "step", "--profile", str(prof), "--profile-steps", "2"]
    assert main([*args, "--memory-snapshot", str(mem), "--json", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    trace = json.loads((prof / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"forward", "backward", "optimizer"} <= names  # our record_function labels
    assert any(str(n).startswith("aten::") for n in names)
    table = (prof / "top_ops.txt").read_text()
    assert "self CPU" in table and ("aten::mm" in table or "aten::addmm" in table)
    assert "aten::" in printed  # the table is printed too
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["profile"]["top_ops"][0]["self_cpu_us"] >= r["profile"]["top_ops"][-1]["self_cpu_us"]
    # CPU fallback of --memory-snapshot: peak RSS and the profiler's allocation timeline, as JSON
    record = json.loads(mem.read_text())
    assert record["peak_rss_bytes"] > 0
    timeline = record["timeline_us_bytes"]
    assert len(timeline) > 10 and all(t2 >= t1 for (t1, _), (t2, _) in zip(timeline, timeline[1:], strict=False))
    # activations of a 2 x 16 token step: the logits alone are 2 x 16 x 512 fp32
    assert r["memory"]["profiled_peak_allocated_bytes"] >= 2 * 16 * 512 * 4


def test_flops_hand_computed():
    """CS336 small at T = 128: per layer q/k/v/o 4 x 2 D^2, scores and values 2 x 2 D (T + 1) / 2 (causal),
    SwiGLU 3 x 2 D F; head 2 D V; backward twice the forward."""
    D, L, F, V, T, B = 768, 12, 3072, 10_000, 128, 4
    cfg = bench_model_config("small", T)
    per_token = L * (8 * D * D + 2 * D * (T + 1) + 6 * D * F) + 2 * D * V
    assert model_flops_per_step(cfg, B, T, "fwd") == pytest.approx(per_token * B * T, rel=1e-12)
    assert model_flops_per_step(cfg, B, T, "fwd_bwd") == pytest.approx(3 * per_token * B * T, rel=1e-12)
    assert model_flops_per_step(cfg, B, T, "step") == model_flops_per_step(cfg, B, T, "fwd_bwd")
    # 1e12 FLOPs in 2 s on a 1 TFLOP/s device: 50%
    assert mfu(1e12, 2.0, 1e12) == pytest.approx(0.5)
    with pytest.raises(ScratchLMError):
        mfu(1e12, 0.0, 1e12)


def test_flops_match_torch_flop_counter():
    """torch.utils.flop_counter over a real forward + backward: equal to the model's count of what a dense
    kernel computes (causal=False; the naive backend's explicit T x T matmuls, which FlopCounterMode sees)."""
    from torch.utils.flop_counter import FlopCounterMode

    from scratchlm.model.accounting import flops_per_token
    from scratchlm.model.transformer import TransformerLM

    B, T = 2, 16
    cfg = bench_model_config("debug", T, ["attn_backend=naive"])
    model = TransformerLM(cfg)
    x = torch.randint(0, cfg.vocab_size, (B, T))
    with FlopCounterMode(display=False) as counter:
        model(x).float().logsumexp(-1).sum().backward()
    assert counter.get_total_flops() == flops_per_token(cfg, T, causal=False)["train"] * B * T
    # and the bench's causal count is that minus the masked half of the score / value matmuls
    dense = flops_per_token(cfg, T, causal=False)["train"] * B * T
    masked = 3 * cfg.n_layers * 2 * 2 * cfg.d_model * (T - (T + 1) / 2) * B * T
    assert model_flops_per_step(cfg, B, T, "fwd_bwd") == pytest.approx(dense - masked, rel=1e-12)


@pytest.mark.parametrize("size", list(CS336_SIZES))
def test_cs336_sizes_have_the_assignment_shapes(size):
    from scratchlm.model.accounting import count_params

    D, L, H = CS336_SIZES[size]
    cfg = bench_model_config(size, 256)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.ff_dim, cfg.vocab_size) == (D, L, H, 4 * D, 10_000)
    assert cfg.context_length == 256
    # untied embedding + head, per layer 4 D^2 attention + 3 D F SwiGLU + 2 norms, final norm
    want = 2 * 10_000 * D + L * (4 * D * D + 3 * D * 4 * D + 2 * D) + D
    assert count_params(cfg)["total"] == want


def test_summary_statistics():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s["mean"], s["median"], s["min"], s["max"]) == (2.5, 2.5, 1.0, 4.0)
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))
    assert summarize([0.5])["std"] == 0.0


def test_matmul_peak_is_positive():
    assert _positive(measure_matmul_peak(torch.device("cpu"), torch.float32, n=64, seconds=0.01))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(preset="huge"), "unknown model size or preset 'huge'.*small, medium"),
        (dict(batch=0), "--batch must be >= 1"),
        (dict(seq_len=-1), "--seq-len must be >= 1"),
        (dict(steps=0), "--steps must be >= 1"),
        (dict(warmup=-1), "--warmup must be >= 0"),
        (dict(mode="bwd"), "unknown mode 'bwd'"),
        (dict(precision="fp8"), "unknown precision 'fp8'"),
        (dict(device="tpu"), "--device must be cpu or cuda"),
        (dict(seq_len=65), "exceeds the context_length 64 of preset 'debug'"),
    ],
)
def test_bad_input_is_a_clear_error(change, match):
    cfg = ModelBenchConfig(**{**dict(preset="debug", batch=1, seq_len=8, steps=1, warmup=0, peak_n=64), **change})
    with pytest.raises(ScratchLMError, match=match):
        run_model_bench(cfg, log=lambda *a: None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_cuda_is_one_line(capsys):
    assert main(["bench", "model", *TINY, "--device", "cuda"]) == 1
    assert "scratchlm: error: --device cuda asked for but CUDA is not available" in capsys.readouterr().err


def test_unknown_size_from_the_cli(capsys):
    assert main(["bench", "model", "--preset", "3b", "--peak-n", "64"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("scratchlm: error: unknown model size or preset '3b'") and "2.7b" in err


@pytest.mark.slow
def test_compiled_matches_the_timing_contract(tmp_path):
    out = tmp_path / "r.json"
    assert main(["bench", "model", *TINY, "--mode", "fwd_bwd", "--compile", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["config"]["compile"] and _positive(r["step_s"]["median"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_memory_snapshot(tmp_path):
    snap = tmp_path / "snap.pickle"
    args = ["bench", "model", *TINY, "--device", "cuda", "--autocast", "bf16", "--memory-snapshot", str(snap)]
    assert main([*args, "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert snap.stat().st_size > 0 and r["memory"]["peak_allocated_bytes"] > 0


def test_unwritable_outputs_are_refused_before_the_run(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    assert main(["bench", "model", *TINY, "--memory-snapshot", str(tmp_path)]) == 1
    assert "cannot write the memory snapshot" in capsys.readouterr().err
    assert main(["bench", "model", *TINY, "--profile", str(blocker / "prof")]) == 1
    assert "cannot write the profiler trace" in capsys.readouterr().err
    assert blocker.read_text() == "keep me"
