"""HellaSwag / ARC / PIQA: conversion of the published formats, the download code against a local HTTP
server (the same code path as the real hosts, offline), and bad input."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scratchlm.errors import ScratchLMError
from scratchlm.eval import mc_tasks
from scratchlm.eval.tasks import jsonl_mc_task

HELLASWAG = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "split": "val", "label": 3, "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                                             "is holding a rubik's cube.", "starts pulling up roofing on a roof."]},
    {"ind": 92, "activity_label": "Clean and jerk", "ctx_a": "[header] How to lift [title] Stand up.",
     "ctx_b": "then", "split": "val", "label": "0",
     "endings": ["lifts  the bar [step] slowly.", "drops it.", "sits.", "runs."]},
]  # fmt: skip
PIQA = [
    {"id": "a", "goal": "How do I ready a guinea pig cage?", "sol1": "Use paper shavings.", "sol2": "Use sand."},
    {"id": "b", "goal": "dresser", "sol1": "replace drawer with a bucket", "sol2": "fix the drawer"},
]
ARC_ROWS = [
    {"id": f"q{i}", "question": f"Question {i}?", "choices": {"text": ["x", "y", "z", "w"], "label": list("ABCD")},
     "answerKey": "ABCD"[i % 4]}
    for i in range(230)
]  # fmt: skip
ARC_ROWS[5] = {"id": "num", "question": "Numbered?", "choices": {"text": ["p", "q", "r"], "label": ["1", "2", "3"]},
               "answerKey": "2"}  # fmt: skip


class Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 (http.server's name)
        url = urllib.parse.urlparse(self.path)
        if url.path == "/rows":
            q = dict(urllib.parse.parse_qsl(url.query))
            assert q["dataset"] == "allenai/ai2_arc" and q["config"] == "ARC-Challenge" and q["split"] == "test"
            lo, n = int(q["offset"]), int(q["length"])
            assert n <= mc_tasks.ROWS_PAGE
            rows = [{"row_idx": i, "row": r, "truncated_cells": []} for i, r in enumerate(ARC_ROWS[lo : lo + n], lo)]
            body = json.dumps({"rows": rows, "num_rows_total": len(ARC_ROWS)}).encode()
        elif url.path.lstrip("/") in self.files:
            body = self.files[url.path.lstrip("/")]
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    Handler.files = {
        "hellaswag_val.jsonl": "\n".join(json.dumps(r) for r in HELLASWAG).encode(),
        "valid.jsonl": "\n".join(json.dumps(r) for r in PIQA).encode(),
        "valid-labels.lst": b"0\n1\n",
    }
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_hellaswag_prompt_is_lm_evals():
    rec = mc_tasks.hellaswag_row(HELLASWAG[0], "x")
    assert rec["context"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert rec["answer"] == 3 and rec["choices"][3] == "starts pulling up roofing on a roof."
    rec = mc_tasks.hellaswag_row(HELLASWAG[1], "x")
    assert rec["context"] == "Clean and jerk: How to lift. Stand up. Then"  # [title] -> ". ", [header] dropped
    assert rec["choices"][0] == "lifts the bar slowly." and rec["answer"] == 0


def test_against_lm_evals_own_hellaswag_preprocessing():
    utils = pytest.importorskip("lm_eval.tasks.hellaswag.utils", reason="lm-eval not installed (the eval extra)")
    for row in HELLASWAG:
        ours = mc_tasks.hellaswag_row(row, "x")
        ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        assert ours["context"] == utils.preprocess(row["activity_label"] + ": " + ctx)
        assert ours["choices"] == [utils.preprocess(e) for e in row["endings"]]


def test_download_hellaswag_and_piqa_then_run_as_tasks(server, tmp_path):
    out = tmp_path / "hs.jsonl"
    recs = mc_tasks.download("hellaswag", "validation", out, base=server)
    assert [r["answer"] for r in recs] == [3, 0]
    examples = jsonl_mc_task(out)
    assert (
        examples[0].context == recs[0]["context"] and examples[0].choices[0] == " is using wrap to wrap a pair of skis."
    )
    piqa = mc_tasks.download("piqa", "validation", tmp_path / "piqa.jsonl", base=server)
    assert [r["answer"] for r in piqa] == [0, 1]
    ex = jsonl_mc_task(tmp_path / "piqa.jsonl")[1]
    assert ex.context == "Question: dresser\nAnswer:" and ex.choices == [
        " replace drawer with a bucket",
        " fix the drawer",
    ]


def test_download_arc_pages_through_the_rows_api(server, tmp_path):
    recs = mc_tasks.download("arc_challenge", "test", tmp_path / "arc.jsonl", base=server)
    assert len(recs) == 230  # three pages of at most 100
    assert recs[5] == {"question": "Numbered?", "choices": ["p", "q", "r"], "answer": 1, "id": "num"}
    assert recs[229]["answer"] == 229 % 4
    assert len(mc_tasks.download("arc_challenge", "test", None, limit=150, base=server)) == 150
    assert jsonl_mc_task(tmp_path / "arc.jsonl")[0].context == "Question: Question 0?\nAnswer:"


def test_convert_local_files(tmp_path):
    raw = tmp_path / "valid.jsonl"
    raw.write_text("\n".join(json.dumps(r) for r in PIQA) + "\n")
    with pytest.raises(ScratchLMError, match="labels"):
        mc_tasks.convert_file("piqa", raw)
    (tmp_path / "labels.lst").write_text("1\n")
    with pytest.raises(ScratchLMError, match="1 labels for 2 examples"):
        mc_tasks.convert_file("piqa", raw, tmp_path / "labels.lst")
    (tmp_path / "labels.lst").write_text("1\n0\n")
    assert [r["answer"] for r in mc_tasks.convert_file("piqa", raw, tmp_path / "labels.lst")] == [1, 0]
    choices = [{"text": "a", "label": "A"}, {"text": "b", "label": "B"}]
    authors = {"id": "x", "question": {"stem": "S?", "choices": choices}, "answerKey": "B"}
    (tmp_path / "arc.jsonl").write_text(json.dumps(authors) + "\n")
    assert mc_tasks.convert_file("arc_easy", tmp_path / "arc.jsonl")[0]["answer"] == 1


def test_bad_input(server, tmp_path):
    with pytest.raises(ScratchLMError, match="unknown task 'winogrande'"):
        mc_tasks.download("winogrande")
    with pytest.raises(ScratchLMError, match="no labelled split 'test'"):
        mc_tasks.download("hellaswag", "test")
    with pytest.raises(ScratchLMError, match="HTTP 404"):
        mc_tasks.download("hellaswag", "train", base=server)
    with pytest.raises(ScratchLMError, match="download failed: http://127.0.0.1:9/"):
        mc_tasks.fetch("http://127.0.0.1:9/x", timeout=5)
    with pytest.raises(ScratchLMError, match="not found"):
        mc_tasks.convert_file("hellaswag", tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(HELLASWAG[0]) + "\n{not json\n")
    with pytest.raises(ScratchLMError, match=r"bad.jsonl:2: not valid JSON"):
        mc_tasks.convert_file("hellaswag", bad)
    bad.write_text(json.dumps({k: v for k, v in HELLASWAG[0].items() if k != "endings"}) + "\n")
    with pytest.raises(ScratchLMError, match=r"bad.jsonl:1: missing field 'endings'"):
        mc_tasks.convert_file("hellaswag", bad)
    bad.write_text(json.dumps({**HELLASWAG[0], "label": ""}) + "\n")
    with pytest.raises(ScratchLMError, match="unlabelled"):
        mc_tasks.convert_file("hellaswag", bad)
    bad.write_text(json.dumps({**ARC_ROWS[0], "answerKey": "E"}) + "\n")
    with pytest.raises(ScratchLMError, match="answerKey 'E'"):
        mc_tasks.convert_file("arc_easy", bad)


def test_acc_norm_counts_the_choice_without_its_delimiter():
    """lm-eval's acc_norm/acc_bytes divide by the length of the choice text, not of " " + text."""
    from scratchlm.eval.tasks import MCExample, evaluate_mc

    class Fixed:  # a scorer returning fixed log-likelihoods
        def loglikelihood(self, pairs, progress=None):
            return [(-2.0, False), (-3.5, False)]

    ex = MCExample("ctx", [" ab", " abcd"], 1)
    # -2/2 = -1.0 vs -3.5/4 = -0.875 -> choice 1 (with the space counted: -2/3 > -3.5/5 -> choice 0)
    metrics, records = evaluate_mc(Fixed(), [ex])
    assert records[0]["acc"] == 0.0 and records[0]["acc_norm"] == 1.0
