"""Issue 12, item 11: every numeric setting is checked at the config boundary, with the key in a one-line
error, before any work (not accepted, not a traceback, not discovered mid-run)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scratchlm.cli import main
from scratchlm.config import load_config
from scratchlm.errors import ScratchLMError
from scratchlm.scaling.config import StudyConfig
from scratchlm.tokenizer.config import TokenizerTrainConfig
from scratchlm.train.config import TrainConfig

TRAIN_CASES = [
    ("optim.betas=[0.9]", r"optim\.betas must have two values, got \[0\.9\]"),
    ("optim.betas=[0.9, 0.95, 0.99]", r"optim\.betas must have two values"),
    ("optim.betas=[0.9, 1.0]", r"optim\.betas must be in \[0, 1\)"),
    ("optim.betas=[-0.1, 0.9]", r"optim\.betas must be in \[0, 1\)"),
    ("optim.eps=0", r"optim\.eps must be > 0, got 0\.0"),
    ("optim.eps=-1e-8", r"optim\.eps must be > 0"),
    ("optim.weight_decay=-0.1", r"optim\.weight_decay must be >= 0"),
    ("optim.lr=-1e-3", r"optim\.lr must be > 0"),
    ("optim.lr=nan", r"optim\.lr must be > 0, got nan"),
    ("optim.muon_lr=0", r"optim\.muon_lr must be > 0"),
    ("optim.muon_momentum=1.0", r"optim\.muon_momentum must be in \[0, 1\)"),
    ("optim.muon_ns_steps=0", r"optim\.muon_ns_steps must be >= 1"),
    ("optim.soap_precondition_frequency=0", r"optim\.soap_precondition_frequency must be >= 1"),
    ("optim.grad_clip=-1", r"optim\.grad_clip must be >= 0"),
    ("optim.z_loss=-1e-4", r"optim\.z_loss must be >= 0"),
    ("schedule.warmup_steps=-1", r"schedule\.warmup_steps must be >= 0"),
    ("schedule.min_lr_ratio=1.5", r"schedule\.min_lr_ratio must be in \[0, 1\]"),
    ("schedule.decay_fraction=0", r"schedule\.decay_fraction must be in \(0, 1\]"),
    ("steps=0", r"steps must be >= 1, got 0"),
    ("batch_size=-2", r"batch_size must be >= 1"),
    ("grad_accum=0", r"grad_accum must be >= 1"),
    ("log_every=0", r"log_every must be >= 1"),
    ("keep_last=0", r"keep_last must be >= 1"),
    ("seq_len=-1", r"seq_len must be >= 0"),
    ("eval_every=-1", r"eval_every must be >= 0"),
    ("eval_tokens=-5", r"eval_tokens must be >= 0"),
    ("checkpoint_every=-10", r"checkpoint_every must be >= 0"),
    ("time_limit_s=-1", r"time_limit_s must be >= 0"),
    ("sample_tokens=-1", r"sample_tokens must be in \[0, model\.context_length"),
    ("device=gpu", r"invalid device 'gpu': use auto, cpu, cuda, cuda:N or mps"),
    ("device=cuda:x", r"invalid device 'cuda:x'"),
    ("device=meta", r"invalid device 'meta'"),
    ("model.d_model=0", r"d_model must be >= 1"),
]


@pytest.mark.parametrize("override, match", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_settings_are_checked_with_their_key(override, match):
    with pytest.raises(ScratchLMError, match=match):
        load_config(TrainConfig, "train", "debug", [override])


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_valid_device_strings_pass(device):
    assert load_config(TrainConfig, "train", "debug", [f"device={device}"]).device == device


TOKENIZER_CASES = [
    ("pattern=(", r"pattern: the pre-tokenization regex does not compile"),
    (r"pattern=\w+", r"pattern: the pre-tokenization regex does not cover every character"),
    ("pattern=a*|.", r"pattern: the pre-tokenization regex matches the empty string"),
    (r"pattern=(\w+)|\s+|.", r"pattern: the pre-tokenization regex has capturing groups"),
    ("vocab_size=100", r"vocab_size 100 must be at least 256"),
    ("num_workers=-1", r"num_workers must be >= 0"),
    ("chunk_mb=0", r"chunk_mb must be at least 0\.001"),
    ("chunk_mb=nan", r"chunk_mb must be at least 0\.001"),
]


@pytest.mark.parametrize("override, match", TOKENIZER_CASES, ids=[c[0] for c in TOKENIZER_CASES])
def test_tokenizer_settings_are_checked_with_their_key(override, match):
    with pytest.raises(ScratchLMError, match=match):
        load_config(TokenizerTrainConfig, overrides=[override])


def test_the_default_and_a_simple_pattern_pass():
    load_config(TokenizerTrainConfig)
    load_config(TokenizerTrainConfig, overrides=[r"pattern=\w+|\s+|."])


STUDY_CASES = [
    ({"budgets": [-1.0]}, r"budgets must be positive FLOP counts"),
    ({"budgets": [float("inf")]}, r"budgets must be positive FLOP counts"),
    ({"sizes": 0}, r"sizes must be >= 1"),
    ({"spread": 0.5}, r"spread must be >= 1"),
    ({"parallel": 0}, r"parallel must be >= 1"),
    ({"bootstrap": -1}, r"bootstrap must be >= 0"),
    ({"min_steps": -1}, r"min_steps must be >= 0"),
    ({"shape": {"aspect_ratio": 0}}, r"shape\.aspect_ratio must be > 0"),
    ({"shape": {"max_head_dim": 1}}, r"shape\.max_head_dim must be >= 2"),
]


@pytest.mark.parametrize("base, match", STUDY_CASES, ids=[str(c[0]) for c in STUDY_CASES])
def test_scaling_study_settings_are_checked_with_their_key(base, match):
    with pytest.raises(ScratchLMError, match=match):
        load_config(StudyConfig, base={"budgets": [1e12], **base})


def runs_csv(tmp_path):
    rows = ["N,D,loss"] + [
        f"{n},{20 * n * k},{2 + 1e3 / n + 1e4 / (20 * n * k)}" for n in (1e5, 3e5, 1e6) for k in (1, 2)
    ]
    path = tmp_path / "runs.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


FIT_CASES = [
    (["--drop-highest-loss", "-3"], "--drop-highest-loss must be >= 0, got -3"),
    (["--bootstrap", "-1"], "--bootstrap must be >= 0, got -1"),
    (["--bins", "0"], "--bins must be >= 1, got 0"),
    (["--tol", "-0.1"], "--tol must be >= 0, got -0.1"),
    (["--vocab", "0"], "--vocab must be >= 1, got 0"),
    (["--seq-len", "-5"], "--seq-len must be >= 1, got -5"),
    (["--aspect", "0"], "--aspect must be > 0, got 0.0"),
    (["--predict", "1e20", "-5"], "--predict must be > 0 (FLOPs), got -5.0"),
]


@pytest.mark.parametrize("flags, message", FIT_CASES, ids=[c[0][0] for c in FIT_CASES])
def test_scaling_fit_flags_are_checked_before_fitting(tmp_path, capsys, monkeypatch, flags, message):
    from scratchlm.scaling import fit

    monkeypatch.setattr(fit, "fit_runs", lambda *a, **k: pytest.fail("fitted despite a bad flag"))
    assert main(["scaling", "fit", "--runs", str(runs_csv(tmp_path)), "--out", str(tmp_path / "fit"), *flags]) == 1
    err = capsys.readouterr().err
    assert err == f"scratchlm: error: {message}\n"
    assert not (tmp_path / "fit").exists()


def test_drop_highest_loss_negative_is_refused_by_the_library_too(tmp_path):
    from scratchlm.scaling.runs import load_runs

    with pytest.raises(ScratchLMError, match="must be >= 0, got -3"):
        load_runs(runs_csv(tmp_path), drop_highest_loss=-3)  # the old code silently dropped all but 3 runs


def test_drop_highest_loss_negative_in_a_subprocess(tmp_path):
    argv = ["scaling", "fit", "--runs", str(runs_csv(tmp_path)), "--out", str(tmp_path / "f"), "--drop-highest-loss"]
    r = subprocess.run([sys.executable, "-m", "scratchlm", *argv, "-3"], capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (1, "scratchlm: error: --drop-highest-loss must be >= 0, got -3\n")


def test_sweep_parallel_is_checked(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(f'preset = "debug"\nout_dir = "{tmp_path / "sw"}"\nparallel = "two"\n[grid]\nseed = [1]\n')
    assert main(["sweep", "run", str(spec)]) == 1
    assert "parallel must be an integer >= 1, got 'two'" in capsys.readouterr().err
    spec.write_text(spec.read_text().replace('parallel = "two"', "parallel = 1"))
    assert main(["sweep", "run", str(spec), "--parallel", "-1"]) == 1
    assert capsys.readouterr().err == "scratchlm: error: --parallel must be >= 1, got -1\n"
    assert not (tmp_path / "sw").exists()


DEDUP_CASES = [
    (["--jaccard-threshold", "5"], "jaccard_threshold must be in (0, 1], got 5.0"),
    (["--ngrams", "0"], "ngrams must be >= 1, got 0"),
    (["--workers", "-2"], "the number of workers must be >= 0 (0 = one per core), got -2"),
    (["--num-bands", "0"], "num_bands (0) must divide num_hashes (128) evenly"),
]


@pytest.mark.parametrize("flags, message", DEDUP_CASES, ids=[c[0][0] for c in DEDUP_CASES])
def test_dedup_settings_are_checked(tmp_path, capsys, flags, message):
    (tmp_path / "a.txt").write_text("one document\n")
    assert main(["data", "dedup", "minhash", "--input", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), *flags])
    assert capsys.readouterr().err == f"scratchlm: error: {message}\n"


def test_quality_apply_threshold_is_a_probability(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("one document\n")
    argv = [
        "data",
        "quality",
        "apply",
        "--model",
        "m",
        "--input",
        str(tmp_path / "a.txt"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--threshold", "7"]) == 1
    assert capsys.readouterr().err == "scratchlm: error: --threshold must be a probability in [0, 1], got 7.0\n"
    assert not (tmp_path / "o").exists()


def test_more_workers_than_cores_are_capped_not_all_started(tmp_path, monkeypatch, caplog):
    """num_workers=100000 used to start 100,000 forked processes at once (a fork pool starts them all)."""
    from scratchlm import workers
    from scratchlm.tokenizer import train as tok_train

    monkeypatch.setattr(workers, "default_workers", lambda: 2)
    assert workers.resolve_workers(None) == workers.resolve_workers(0) == 2
    assert workers.resolve_workers(1) == 1
    with pytest.raises(ScratchLMError, match="workers must be >= 0"):
        workers.resolve_workers(-1)
    started = []

    class CountingPool:  # stands in for ProcessPoolExecutor: records how many processes would start
        def __init__(self, max_workers, **kwargs):
            started.append(max_workers)
            assert max_workers <= 2, f"a pool of {max_workers} processes"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, *args):
            from concurrent.futures import Future

            f = Future()
            f.set_result(fn(*args))
            return f

    monkeypatch.setattr(workers, "ProcessPoolExecutor", CountingPool)  # every pool is made by workers.worker_pool
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat <|endoftext|>" * 2000, encoding="utf-8")
    with caplog.at_level("WARNING"):
        counts = tok_train.count_pretokens_in_file(corpus, ["<|endoftext|>"], num_workers=100_000, chunk_bytes=4096)
    assert counts[" cat"] == 2000 and started == [2]
    assert "num_workers=100000 is more than the 2 CPU cores this process may use: using 2" in caplog.text
