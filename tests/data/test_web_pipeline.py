"""The pipeline runner end to end on synthetic shards: stages, report, resume, failures, tokens, config errors."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from web_helpers import html_page, paragraph, warc_record, write_jsonl

from scratchlm.cli import main
from scratchlm.config import from_dict
from scratchlm.data import stages as stages_mod
from scratchlm.data.pipeline import PipelineConfig
from scratchlm.data.runner import load_pipeline, run_pipeline
from scratchlm.errors import ScratchLMError

pytest.importorskip("fastwarc")
pytest.importorskip("fasttext")

FRENCH = (
    "Le conseil municipal s'est réuni mardi soir pour discuter du budget de la nouvelle bibliothèque. Les élus ont "
    "décidé que les salles de lecture resteraient ouvertes plus tard pendant la période des examens. "
) * 4

STAGES = [
    {"stage": "extract"},
    {"stage": "language", "languages": ["en"]},
    {"stage": "pii"},
    {"stage": "gopher"},
    {"stage": "exact_dedup"},
    {"stage": "minhash_dedup", "num_hashes": 64, "num_bands": 8},
    {"stage": "length", "min_chars": 100},
]


def near_copy(text: str, seed: int) -> str:
    words = text.split()
    words[len(words) // 3] = f"changed{seed}"
    return " ".join(words)


def make_inputs(root: Path) -> list[str]:
    """a.warc.gz: 6 records (one PDF, one French page, one corrupt gzip member); b.jsonl: 5 documents.

    Written once per directory: rewriting would change the inputs' fingerprints (a resume must not skip)."""
    if (root / "b.jsonl").exists():
        return [str(root / "a.warc.gz"), str(root / "b.jsonl")]
    recs = [
        warc_record("http://a/0", html_page(paragraph(0, 300) + "\n\nWrite to jane.doe@example.com today."), "id-0"),
        warc_record("http://a/pdf", b"%PDF-1.4 binary", "id-1", "application/pdf"),
        warc_record("http://a/fr", html_page(FRENCH), "id-2"),
        warc_record("http://a/3", html_page(paragraph(1, 300)), "id-3"),
        warc_record("http://a/4", html_page(paragraph(2, 300)), "id-4"),
        warc_record("http://a/5", html_page(paragraph(3, 300)), "id-5"),
    ]
    members = [gzip.compress(r) for r in recs]
    bad = bytearray(members[4])
    bad[40:60] = b"\x00" * 20
    members[4] = bytes(bad)
    (root / "a.warc.gz").write_bytes(b"".join(members))
    rows = [
        {"id": "b0", "text": paragraph(10, 300), "url": "http://b/0"},
        {"id": "b1", "text": paragraph(10, 300)},  # exact copy of b0
        {"id": "b2", "text": near_copy(paragraph(1, 300), 7)},  # near copy of a/3
        {"id": "b3", "text": "Too short to be a document."},
        {"id": "b4", "text": paragraph(11, 300)},
    ]
    write_jsonl(root / "b.jsonl", rows)
    return [str(root / "a.warc.gz"), str(root / "b.jsonl")]


def config(tmp_path: Path, stages=None, **kw) -> PipelineConfig:
    data = {
        "input": {"paths": make_inputs(tmp_path)},
        "output": {"dir": str(tmp_path / "run")},
        "workers": 2,
        "stages": stages or STAGES,
        **kw,
    }
    return from_dict(PipelineConfig, data)


def outputs(run: Path) -> dict[str, dict]:
    docs = {}
    for f in sorted((run / "data").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            docs[rec["id"]] = rec
    return docs


def quiet(*args, **kwargs):
    pass


def stage(report: dict, name: str) -> dict:
    return next(s for s in report["stages"] if s["name"] == name)


def test_pipeline_end_to_end(tmp_path):
    report = run_pipeline(config(tmp_path), progress=False, log=quiet)
    run = tmp_path / "run"
    docs = outputs(run)
    assert sorted(docs) == ["b0", "b4", "id-0", "id-3", "id-5"]
    d0 = docs["id-0"]
    assert d0["url"] == "http://a/0" and d0["record_id"] == "<urn:uuid:id-0>" and d0["source"].endswith("a.warc.gz")
    assert "|||EMAIL_ADDRESS|||" in d0["text"] and "jane.doe" not in d0["text"] and "<p>" not in d0["text"]
    assert d0["meta"]["language"] == "en"

    read = stage(report, "read")
    assert read["drops"] == {"not_html": 1} and read["counters"] == {"corrupt_gzip_member": 1}
    assert stage(report, "language")["drops"] == {"language_other": 1}
    assert stage(report, "pii")["counters"]["emails_masked"] == 1
    assert stage(report, "gopher")["drops"] == {"gopher_too_few_words": 1}
    assert stage(report, "exact_dedup")["drops"] == {"duplicate": 1}
    assert stage(report, "exact_dedup")["examples"]["duplicate"][0]["detail"] == "duplicate of b0"
    near = stage(report, "minhash_dedup")
    assert near["drops"] == {"near_duplicate": 1} and near["examples"]["near_duplicate"][0]["id"] == "b2"
    assert near["examples"]["near_duplicate"][0]["detail"] == "near-duplicate of id-3"
    for s in report["stages"]:
        assert s["docs_in"] - s["docs_out"] == sum(s["drops"].values())
        assert s["bytes_out"] <= s["bytes_in"] or s["name"] == "read"
    assert stage(report, "extract")["bytes_out"] < stage(report, "extract")["bytes_in"]  # HTML -> text
    assert [p["phase"] for p in report["phases"]] == [
        "phase-00-local",
        "phase-01-exact_dedup",
        "phase-02-minhash_dedup",
    ]

    md = (run / "report.md").read_text()
    assert "| language | 9 | 8 |" in md and "language_other" in md and "http://a/fr" in md
    assert "corrupt_gzip_member" in md and json.loads((run / "report.json").read_text())["stages"]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_resume_skips_finished_shards_and_redoes_missing_ones(tmp_path):
    cfg = config(tmp_path)
    run_pipeline(cfg, progress=False, log=quiet)
    run = tmp_path / "run"
    first = outputs(run)
    final_a = next((run / "data").glob("00000-*.jsonl"))
    stamp = final_a.stat().st_mtime_ns
    report = run_pipeline(cfg, progress=False, log=quiet)
    assert all(p["processed"] == 0 and p["skipped"] == 2 for p in report["phases"])
    assert final_a.stat().st_mtime_ns == stamp and outputs(run) == first
    assert stage(report, "read")["counters"] == {"corrupt_gzip_member": 1}  # stats come back from the sidecars

    b = next((run / "data").glob("00001-*.jsonl"))
    b.unlink()
    report = run_pipeline(cfg, progress=False, log=quiet)
    assert [p["processed"] for p in report["phases"]] == [0, 0, 1]
    assert final_a.stat().st_mtime_ns == stamp and outputs(run) == first

    changed = config(tmp_path, stages=[*STAGES[:-1], {"stage": "length", "min_chars": 10**9}])
    report = run_pipeline(changed, progress=False, log=quiet)
    assert [p["processed"] for p in report["phases"]] == [0, 0, 2]  # only the phase whose stages changed
    assert outputs(run) == {}


@dataclass
class FailConfig:
    flag: str = ""  # raise while this file exists


class FailOnB:
    """Fails on the documents of shard b while a flag file exists: an interruption that a rerun can get past."""

    def __init__(self, cfg: FailConfig):
        self.flag = cfg.flag

    def __call__(self, doc, stats):
        if doc.source.endswith("b.jsonl") and os.path.exists(self.flag):
            raise RuntimeError("simulated crash")
        return None


def test_failed_shard_is_reported_and_resumed(tmp_path, monkeypatch):
    monkeypatch.setitem(stages_mod.LOCAL_STAGES, "fail_on_b", stages_mod.StageSpec(FailConfig, FailOnB, "test"))
    flag = tmp_path / "crash"
    flag.touch()
    stages = [{"stage": "extract"}, {"stage": "fail_on_b", "flag": str(flag)}, {"stage": "exact_dedup"}]
    cfg = config(tmp_path, stages=stages, on_error="raise")
    with pytest.raises(ScratchLMError, match=r"1 of 2 shards failed \(00001-b: RuntimeError: simulated crash\)"):
        run_pipeline(cfg, progress=False, log=quiet)
    work = tmp_path / "run" / "work" / "phase-00-local"
    assert sorted(p.name for p in work.iterdir()) == ["00000-a.jsonl", "00000-a.stats.json"]
    flag.unlink()
    report = run_pipeline(cfg, progress=False, log=quiet)
    assert [p["processed"] for p in report["phases"]] == [1, 2]
    assert len(outputs(tmp_path / "run")) == 8  # 9 documents read (4 from a, 5 from b), b1 an exact duplicate

    stages = [{"stage": "extract"}, {"stage": "fail_on_b", "flag": str(tmp_path / "crash2")}]
    skip = config(tmp_path, stages=stages, max_error_fraction=1.0)
    (tmp_path / "crash2").touch()
    report = run_pipeline(skip, progress=False, log=quiet)  # on_error = "skip", no error limit: counted, not fatal
    assert stage(report, "fail_on_b")["drops"] == {"fail_on_b_error": 5}


def test_pipeline_writes_token_files(tmp_path):
    from scratchlm.tokenizer import Tokenizer, load_tokenizer, save_tokenizer, train_bpe
    from scratchlm.tokenizer.token_file import open_tokens

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("<|endoftext|>".join(paragraph(s, 200) for s in range(5)), encoding="utf-8")
    vocab, merges = train_bpe(corpus, 300, ["<|endoftext|>"], num_workers=1)
    save_tokenizer(Tokenizer(vocab, merges, ["<|endoftext|>"]), tmp_path / "tok")
    cfg = config(
        tmp_path,
        stages=[{"stage": "extract"}, {"stage": "language"}],
        output={"dir": str(tmp_path / "run"), "tokenizer": str(tmp_path / "tok")},
    )
    report = run_pipeline(cfg, progress=False, log=quiet)
    ids, meta = open_tokens(tmp_path / "run" / "tokens.bin")
    assert meta["documents"] == 8 and meta["count"] == len(ids) == report["tokens"]["tokens"]
    tok = load_tokenizer(tmp_path / "tok")
    texts = [d["text"] for d in outputs(tmp_path / "run").values()]
    decoded = tok.decode(np.asarray(ids).tolist()).split("<|endoftext|>")
    assert sorted(decoded[:-1]) == sorted(texts) and decoded[-1] == ""
    again = run_pipeline(cfg, progress=False, log=quiet)
    assert again["tokens"]["tokens"] == report["tokens"]["tokens"]


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(
        ScratchLMError, match=r"stages\[1\] \(language\): unknown config key 'min_scor' \(did you mean 'min_score'\?\)"
    ):
        config(tmp_path, stages=[{"stage": "extract"}, {"stage": "language", "min_scor": 0.5}]).validate()
    with pytest.raises(ScratchLMError, match=r"unknown stage 'minhash' \(did you mean 'minhash_dedup'\?\)"):
        config(tmp_path, stages=[{"stage": "minhash"}]).validate()
    with pytest.raises(ScratchLMError, match="must divide"):
        config(tmp_path, stages=[{"stage": "minhash_dedup", "num_bands": 7}]).validate()
    with pytest.raises(ScratchLMError, match="first stage must be `extract`"):
        run_pipeline(config(tmp_path, stages=[{"stage": "language"}]), progress=False, log=quiet)
    with pytest.raises(ScratchLMError, match="matches no file"):
        run_pipeline(
            from_dict(PipelineConfig, {"input": {"paths": [str(tmp_path / "nope*.jsonl")]}, "output": {"dir": "x"}})
        )


def test_cli_run_and_one_line_errors(tmp_path, capsys):
    inputs = make_inputs(tmp_path)
    pipe = tmp_path / "p.toml"
    pipe.write_text(
        f'workers = 1\n[input]\npaths = ["{inputs[1]}"]\n[output]\ndir = "{tmp_path / "run"}"\n'
        '[[stages]]\nstage = "gopher"\n[[stages]]\nstage = "exact_dedup"\n'
    )
    assert main(["data", "run", str(pipe), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "5 documents in, 3 out" in out and "report.md" in out
    assert len(outputs(tmp_path / "run")) == 3
    cfg = load_pipeline(pipe, ["workers=2"])
    assert cfg.workers == 2 and cfg.stages[0] == {"stage": "gopher"}
    pipe.write_text(pipe.read_text().replace('stage = "gopher"', 'stage = "gopher"\nmin_word = 3'))
    assert main(["data", "run", str(pipe)]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("scratchlm: error: stages[0] (gopher): unknown config key 'min_word'") and err.count("\n") == 1
    )


def test_example_pipelines_load():
    from scratchlm.config import list_presets
    from scratchlm.data.pipeline import build_phases

    names = list_presets("data")
    assert {"web-en", "wet-c4", "dedup-jsonl"} <= set(names)
    for name in names:
        cfg = load_pipeline(name)
        assert build_phases(cfg)[0].names, name


class BatchFails:
    """A batch-capable stage whose batch call fails because of one document: the runner retries one by one."""

    def __init__(self, cfg: FailConfig):
        pass

    def __call__(self, doc, stats):
        if doc.id == "b3":
            raise ValueError("bad document")
        return None

    def batch(self, docs, stats):
        return [self(d, stats) for d in docs]


def test_batch_stage_failure_isolated_to_one_document(tmp_path, monkeypatch):
    monkeypatch.setitem(stages_mod.LOCAL_STAGES, "batchy", stages_mod.StageSpec(FailConfig, BatchFails, "test"))
    report = run_pipeline(
        config(tmp_path, stages=[{"stage": "extract"}, {"stage": "batchy"}], max_error_fraction=0.5),
        progress=False,
        log=quiet,
    )
    s = stage(report, "batchy")
    assert s["drops"] == {"batchy_error": 1} and s["docs_out"] == 8
    assert s["examples"]["batchy_error"][0]["detail"] == "ValueError: bad document"


def test_line_dedup_stage_across_shards(tmp_path):
    boiler = "Subscribe to our newsletter\nShare this page"
    write_jsonl(tmp_path / "x.jsonl", [{"id": "x0", "text": f"Story one.\n{boiler}"}, {"id": "x1", "text": boiler}])
    write_jsonl(tmp_path / "y.jsonl", [{"id": "y0", "text": f"{boiler}\n\nStory two."}])
    cfg = from_dict(
        PipelineConfig,
        {
            "input": {"paths": [str(tmp_path / "x.jsonl"), str(tmp_path / "y.jsonl")]},
            "output": {"dir": str(tmp_path / "run")},
            "stages": [{"stage": "line_dedup"}],
        },
    )
    report = run_pipeline(cfg, progress=False, log=quiet)
    docs = outputs(tmp_path / "run")
    assert {k: v["text"] for k, v in docs.items()} == {"x0": "Story one.", "y0": "\nStory two."}
    s = stage(report, "line_dedup")
    assert s["drops"] == {"empty_after_line_dedup": 1} and s["counters"] == {"lines_removed": 6}
    assert report["global_stages"][0]["duplicated_distinct_lines"] == 2


def test_wet_input_needs_no_extract_stage(tmp_path):
    from web_helpers import write_warc

    recs = [
        warc_record(f"http://w/{i}", paragraph(20 + i, 200).encode(), f"w{i}", "text/plain", record_type="conversion")
        for i in range(3)
    ]
    wet = write_warc(tmp_path / "x.warc.wet.gz", recs)
    cfg = from_dict(
        PipelineConfig,
        {"input": {"paths": [str(wet)]}, "output": {"dir": str(tmp_path / "run")}, "stages": [{"stage": "gopher"}]},
    )
    run_pipeline(cfg, progress=False, log=quiet)
    assert sorted(outputs(tmp_path / "run")) == ["w0", "w1", "w2"]


def test_force_removes_only_what_the_pipeline_wrote(tmp_path):
    """--force (issue 12, item 1) deletes the previous run's own outputs, never a user's files beside them."""
    cfg = config(tmp_path, stages=[{"stage": "extract"}, {"stage": "exact_dedup"}])
    run_pipeline(cfg, progress=False, log=quiet)
    run = tmp_path / "run"
    notes = [run / "data" / "my-notes.txt", run / "work" / "keep.me", run / "tokens" / "mine.bin"]
    for p in notes:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("a user's file")
    first = outputs(run)
    again = run_pipeline(cfg, force=True, progress=False, log=quiet)
    assert all(p.read_text() == "a user's file" for p in notes)
    assert outputs(run) == first and again["inputs"] == 2


def test_input_inside_the_output_directory_is_refused(tmp_path):
    cfg = config(tmp_path)
    inside = tmp_path / "run" / "b.jsonl"
    inside.parent.mkdir()
    inside.write_bytes((tmp_path / "b.jsonl").read_bytes())
    cfg.input.paths = [str(inside)]
    with pytest.raises(ScratchLMError, match="inside the output directory"):
        run_pipeline(cfg, progress=False, log=quiet)
    assert inside.exists()
