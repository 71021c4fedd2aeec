"""The default quality classifier (issue 12): built at first use from Python's own docs vs synthetic boilerplate,
cached, described honestly in its meta.json, and used by `classify_quality` and the pipeline's quality stage
when no model is given."""

from __future__ import annotations

import json

import pytest
from web_helpers import write_jsonl

from scratchlm.cli import main
from scratchlm.config import from_dict
from scratchlm.data import classify_quality
from scratchlm.data import default_quality as dq
from scratchlm.data.pipeline import PipelineConfig
from scratchlm.data.runner import run_pipeline
from scratchlm.errors import ScratchLMError

NEWS = (
    "The harbour authority announced on Friday that the old ferry terminal will be turned into a public library. "
    "Work is expected to begin next spring, and the building should open to readers within two years."
)
COOKIES = (
    "We value your privacy. We and our partners use cookies to store and access information on your device. "
    "Accept all | Reject all | Manage options | Privacy Policy | Terms of Use | © 2024 Example Media Ltd."
)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A fresh $SCRATCHLM_HOME in which the first classify_quality() call builds the default model."""
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("home")
        mp.setenv("SCRATCHLM_HOME", str(d))
        mp.delenv("SCRATCHLM_QUALITY_MODEL", raising=False)
        assert not dq.default_model_dir().exists()
        label, p = classify_quality(NEWS)  # no model given: builds it
        assert label == "hq" and p > 0.9
        yield d


def test_the_default_model_says_what_it_was_trained_on_and_how_good_it_is(home):
    meta = json.loads((dq.default_model_dir() / "meta.json").read_text())
    assert meta["name"] == dq.NAME and meta["labels"] == ["hq", "lq"]
    assert "pydoc_data.topics" in meta["positive_sources"][0] and "docstrings" in meta["positive_sources"][1]
    assert "synthetic pages of web boilerplate" in meta["negative_sources"][0]
    assert meta["train_documents"]["positive"] > 500 and meta["train_documents"]["negative"] > 500
    assert meta["held_out"]["accuracy"] >= 0.95 and "optimistic" in meta["held_out"]["note"]
    assert meta["probes"]["documents"] == len(dq.PROBES) and meta["probes"]["accuracy"] >= 0.75
    assert "scratchlm data quality train" in meta["limits"] and "Toy-sized" in meta["limits"]


def test_the_default_model_classifies_and_is_built_once(home):
    model_file = dq.default_model_dir() / "model.safetensors"
    before = model_file.stat().st_mtime_ns
    assert classify_quality(COOKIES)[0] == "lq"
    assert classify_quality(NEWS)[0] == "hq"
    assert dq.ensure_default_quality_model() == dq.default_model_dir()
    assert model_file.stat().st_mtime_ns == before  # cached, not rebuilt


def test_pipeline_quality_stage_without_a_model_uses_the_default(home, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    write_jsonl(inp / "docs.jsonl", [{"id": "news", "text": NEWS}, {"id": "cookies", "text": COOKIES}])
    data = {"input": {"paths": [str(inp)]}, "output": {"dir": str(tmp_path / "run")}, "workers": 1}
    cfg = from_dict(PipelineConfig, {**data, "stages": [{"stage": "quality"}]})
    cfg.validate()
    run_pipeline(cfg, progress=False, log=lambda *a, **k: None)
    kept = [json.loads(line)["id"] for f in sorted((tmp_path / "run" / "data").glob("*.jsonl")) for line in open(f)]
    assert kept == ["news"]


def test_cli_describes_the_default_model(home, capsys):
    assert main(["data", "quality", "default"]) == 0
    out = capsys.readouterr().out
    assert str(dq.default_model_dir()) in out and "held-out  accuracy" in out and "probes" in out
    assert "scratchlm data quality train" in out
    assert main(["data", "classify", COOKIES, "--quality-model"]) == 0
    assert "quality     lq" in capsys.readouterr().out


def test_no_place_to_build_it_is_a_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("SCRATCHLM_HOME", str(tmp_path / "file" / "home"))
    monkeypatch.delenv("SCRATCHLM_QUALITY_MODEL", raising=False)
    with pytest.raises(ScratchLMError, match="cannot write the default quality model") as e:
        classify_quality(NEWS)
    assert "\n" not in str(e.value)


def test_too_little_prose_says_how_to_train_one(tmp_path, monkeypatch):
    monkeypatch.setattr(dq, "positive_documents", lambda seed=0: (["a short text"] * 10, {}))
    with pytest.raises(ScratchLMError, match="scratchlm data quality train --positive") as e:
        dq.build_default_quality_model(tmp_path / "m")
    assert "\n" not in str(e.value) and not (tmp_path / "m").exists()


def test_negative_generators_make_every_kind_deterministically():
    vocab = ["library", "harbour", "ferry", "building", "reader"]
    a, b = dq.negative_documents(50, vocab, seed=3), dq.negative_documents(50, vocab, seed=3)
    assert a == b and len(set(a)) == 50
    for kind in dq.KINDS:
        assert dq._block(kind, __import__("random").Random(0), vocab).strip()
