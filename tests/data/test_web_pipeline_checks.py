"""Issue 12, item 6: a pipeline stage that cannot work is an error before the first shard, and a stage that fails
on most documents stops the run instead of dropping everything as `<stage>_error` and exiting 0."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from web_helpers import paragraph, write_jsonl

from scratchlm.config import from_dict
from scratchlm.data import stages as stages_mod
from scratchlm.data.pipeline import PipelineConfig
from scratchlm.data.runner import run_pipeline
from scratchlm.errors import ScratchLMError

pytest.importorskip("fasttext")


def quiet(*args, **kwargs):
    pass


def pipeline(tmp_path: Path, stages: list[dict], **kw) -> PipelineConfig:
    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    if not (inp / "a.jsonl").exists():
        write_jsonl(inp / "a.jsonl", [{"id": f"a{i}", "text": paragraph(i, 80)} for i in range(6)])
        write_jsonl(inp / "b.jsonl", [{"id": f"b{i}", "text": paragraph(10 + i, 80)} for i in range(6)])
    data = {"input": {"paths": [str(inp)]}, "output": {"dir": str(tmp_path / "run")}, "workers": 1, "stages": stages}
    cfg = from_dict(PipelineConfig, {**data, **kw})
    cfg.validate()
    return cfg


def not_a_model(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"  # e.g. a training checkpoint where a fastText model is expected
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    return path


@pytest.mark.parametrize(
    "stage, match",
    [
        ({"stage": "language", "model": "{tmp}/missing.bin"}, r"stage 'language': fastText model not found"),
        ({"stage": "language", "model": "{bad}"}, r"stage 'language': .*model\.bin is not a fastText model"),
        ({"stage": "toxic", "model": "{tmp}/missing.bin"}, r"stage 'toxic': fastText model not found"),
        ({"stage": "nsfw", "model": "{bad}"}, r"stage 'nsfw': .* is not a fastText model"),
        ({"stage": "quality", "model": "{tmp}/no_such_dir"}, r"stage 'quality': quality model meta\.json not found"),
        ({"stage": "quality", "model": "{tmp}/missing.bin"}, r"stage 'quality': fastText model not found"),
    ],
)
def test_a_stage_model_that_cannot_load_fails_before_any_work(tmp_path, stage, match):
    bad = not_a_model(tmp_path)
    stage = {k: v.format(tmp=tmp_path, bad=bad) if isinstance(v, str) else v for k, v in stage.items()}
    cfg = pipeline(tmp_path, [stage])
    with pytest.raises(ScratchLMError, match=match):
        run_pipeline(cfg, progress=False, log=quiet)
    assert not (tmp_path / "run").exists()  # nothing written, not even the output directory


@pytest.mark.parametrize(
    "stage, match",
    [
        (
            {"stage": "language", "min_score": 7},
            r"stages\[0\] \(language\): min_score must be a probability in \[0, 1\]",
        ),
        ({"stage": "quality", "threshold": -0.1}, r"stages\[0\] \(quality\): threshold must be a probability"),
        ({"stage": "toxic", "threshold": 1.5}, r"stages\[0\] \(toxic\): threshold must be a probability"),
        ({"stage": "nsfw", "threshold": 2}, r"stages\[0\] \(nsfw\): threshold must be a probability"),
        ({"stage": "length", "min_chars": -1}, r"stages\[0\] \(length\): min_chars and max_chars must be >= 0"),
        ({"stage": "length", "min_chars": 50, "max_chars": 10}, r"min_chars 50 exceeds max_chars 10"),
        ({"stage": "gopher", "min_alpha_word_fraction": 3}, r"min_alpha_word_fraction must be a fraction"),
        ({"stage": "repetition", "max_dup_line_fraction": -1}, r"max_dup_line_fraction must be a fraction"),
        ({"stage": "repetition", "max_top_ngram_char_fraction": [0.2]}, r"must be 3 fractions"),
        ({"stage": "c4", "min_sentences": -2}, r"min_sentences must be >= 0"),
        ({"stage": "lang"}, r"unknown stage 'lang' \(did you mean 'language'\?\)"),
    ],
)
def test_impossible_stage_settings_are_config_errors(tmp_path, stage, match):
    with pytest.raises(ScratchLMError, match=match):
        pipeline(tmp_path, [stage])


@pytest.mark.parametrize("value", [-0.5, 1.5])
def test_max_error_fraction_range(tmp_path, value):
    with pytest.raises(ScratchLMError, match="max_error_fraction must be in"):
        pipeline(tmp_path, [{"stage": "pii"}], max_error_fraction=value)


@dataclass
class BrokenConfig:
    every: int = 1  # fail on every n-th document


class Broken:
    """A stage whose model 'loads' but fails on documents (every one, or every n-th)."""

    def __init__(self, cfg: BrokenConfig):
        self.every, self.seen = cfg.every, 0

    def __call__(self, doc, stats):
        self.seen += 1
        if self.seen % self.every == 0:
            raise RuntimeError(f"model exploded on {doc.id}")
        return None


def test_a_stage_failing_on_most_documents_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setitem(stages_mod.LOCAL_STAGES, "broken", stages_mod.StageSpec(BrokenConfig, Broken, "test"))
    cfg = pipeline(tmp_path, [{"stage": "pii"}, {"stage": "broken"}])
    with pytest.raises(
        ScratchLMError,
        match=r"phase-00-local: stage 'broken' failed on 6 of 6 documents of shard 00000-a \(more than "
        r"max_error_fraction = 0\.1\); first error: RuntimeError: model exploded on a0: the run is stopped",
    ):
        run_pipeline(cfg, progress=False, log=quiet)
    data = tmp_path / "run" / "data"
    assert not list(data.glob("*.jsonl")) and not list(data.glob("*.stats.json"))  # no shard marked done
    assert not list(data.glob(".*.tmp"))  # and no half-written one

    # Some errors are fine below the limit; the limit 1 never stops (the old behaviour, when asked for).
    monkeypatch.setattr(stages_mod, "_built", {})
    ok = pipeline(tmp_path, [{"stage": "broken", "every": 3}], max_error_fraction=0.5)
    report = run_pipeline(ok, progress=False, log=quiet)
    broken = next(s for s in report["stages"] if s["name"] == "broken")
    assert broken["drops"] == {"broken_error": 4} and broken["docs_out"] == 8
    everything = pipeline(tmp_path, [{"stage": "broken"}], max_error_fraction=1.0)
    report = run_pipeline(everything, force=True, progress=False, log=quiet)
    assert next(s for s in report["stages"] if s["name"] == "broken")["drops"] == {"broken_error": 12}


def test_a_stage_failing_midway_through_a_large_shard_stops_it_early(tmp_path, monkeypatch):
    from scratchlm.data import shard_task

    monkeypatch.setitem(stages_mod.LOCAL_STAGES, "broken", stages_mod.StageSpec(BrokenConfig, Broken, "test"))
    monkeypatch.setattr(shard_task, "JUDGE_AFTER", 64)
    inp = tmp_path / "big"
    inp.mkdir()
    write_jsonl(inp / "big.jsonl", [{"id": f"d{i}", "text": f"document {i}"} for i in range(1000)])
    cfg = from_dict(
        PipelineConfig, {"input": {"paths": [str(inp)]}, "output": {"dir": str(tmp_path / "run")}, "workers": 1}
    )
    cfg.stages = [{"stage": "broken"}]
    with pytest.raises(ScratchLMError, match=r"failed on 64 of 64 documents"):
        run_pipeline(cfg, progress=False, log=quiet)


def test_cli_bad_stage_model_is_one_line_before_any_work(tmp_path):
    pipeline(tmp_path, [{"stage": "pii"}])  # writes the inputs
    pipe = tmp_path / "p.toml"
    pipe.write_text(
        f'workers = 1\n[input]\npaths = ["{tmp_path / "in"}"]\n[output]\ndir = "{tmp_path / "run"}"\n'
        f'[[stages]]\nstage = "language"\nmodel = "{tmp_path / "nope.bin"}"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "scratchlm", "data", "run", str(pipe), "--quiet"], capture_output=True, text=True
    )
    assert r.returncode == 1, r.stderr
    assert (
        r.stderr.startswith("scratchlm: error: stage 'language': fastText model not found")
        and r.stderr.count("\n") == 1
    ), r.stderr
    assert not (tmp_path / "run").exists()
