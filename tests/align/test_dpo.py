"""Preference data parsing and the DPO trainer on a tiny model: step-0 loss log 2, held-out accuracy rises,
exact resume, a loadable model directory, bad input named."""

import gzip
import json
import math

import pytest
import torch

from scratchlm.align.data import encode_pairs, hh_messages, preference_pairs, read_jsonl
from scratchlm.align.dpo import DPOConfig, preference_accuracy, train_dpo
from scratchlm.errors import ScratchLMError
from scratchlm.model.model_dir import load_model, save_model_dir
from tests.serve.conftest import tiny_model_and_chat


def test_hh_messages_and_pairs():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine, thanks"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: go away"
    assert hh_messages(chosen) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you?"}, {"role": "assistant", "content": "fine, thanks"},
    ]  # fmt: skip
    pairs, problems = preference_pairs(
        [{"chosen": chosen, "rejected": rejected}, {"prompt": "q", "chosen": "a", "rejected": "b"}, {"chosen": "x"},
         {"chosen": chosen, "rejected": "\n\nHuman: other\n\nAssistant: no"}]
    )  # fmt: skip
    assert len(pairs) == 2 and pairs[0].chosen == "fine, thanks" and pairs[0].rejected == "go away"
    assert pairs[0].prompt[-1] == {"role": "user", "content": "how are you?"}
    assert pairs[1].prompt == [{"role": "user", "content": "q"}]
    assert [p.split(":")[0] for p in problems] == ["record 2", "record 3"]


def test_read_jsonl_names_bad_lines(tmp_path):
    f = tmp_path / "d.jsonl.gz"
    with gzip.open(f, "wt") as g:
        g.write('{"a": 1}\nnot json\n\n[1, 2]\n{"b": 2}\n')
    recs, problems = read_jsonl(f)
    assert recs == [{"a": 1}, {"b": 2}]
    assert problems[0].startswith("d.jsonl.gz line 2") and problems[1].startswith("d.jsonl.gz line 4")
    with pytest.raises(ScratchLMError, match="line 2"):
        read_jsonl(f, on_error="fatal")
    with pytest.raises(ScratchLMError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_encode_pairs_truncates_and_skips():
    _, chat = tiny_model_and_chat()
    pairs, _ = preference_pairs([
        {"prompt": "x" * 100, "chosen": "good answer", "rejected": "bad"},
        {"prompt": "q", "chosen": "   ", "rejected": "b"},
    ])  # fmt: skip
    enc, stats = encode_pairs(pairs, chat, max_len=40)
    assert len(enc) == 1 and stats["skipped_empty"] == 1 and stats["prompt_truncated"] == 1
    p = enc[0]
    assert len(p.prompt_ids) == 20 and len(p.prompt_ids) + len(p.chosen_ids) <= 40
    assert p.chosen_ids[-1] == chat.eos_id  # the end-of-turn token closes the response


def write_pairs(path, n):
    with path.open("w") as f:
        for i in range(n):
            q = f"Question {i}: is the sky blue?"
            f.write(json.dumps({"prompt": q, "chosen": "Yes, it is blue.", "rejected": "No way, it is green!"}) + "\n")
        f.write("{broken\n")


@pytest.fixture
def tiny_dir(tmp_path):
    model, chat = tiny_model_and_chat()
    return save_model_dir(model, chat, tmp_path / "tiny")


def test_dpo_learns_preferences_resumes_and_saves(tmp_path, tiny_dir):
    data = tmp_path / "pairs.jsonl"
    write_pairs(data, 24)
    kw = dict(model=str(tiny_dir), data=str(data), steps=6, batch_size=4, micro_batch=2, lr=3e-3, beta=0.5,
              max_len=64, held_out=8, precision="fp32", warmup_steps=1, checkpoint_every=0)  # fmt: skip
    summary = train_dpo(DPOConfig(out_dir=str(tmp_path / "a"), **kw))
    assert summary["pairs"]["bad_lines"] == 1 and summary["train_pairs"] == 16
    recs = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 0
    before, after = summary["evals"][0], summary["evals"][-1]
    assert before["accuracy"] == 0.5 and after["accuracy"] > 0.9 and after["margin"] > 0
    assert train[-1]["loss"] < train[0]["loss"]

    # interrupted after 3 steps, then resumed: the same weights as the straight run
    train_dpo(DPOConfig(out_dir=str(tmp_path / "b"), **kw), stop_after=3)
    train_dpo(DPOConfig(out_dir=str(tmp_path / "b"), **kw), resume=True)
    a, _ = load_model(tmp_path / "a" / "model")
    b, _ = load_model(tmp_path / "b" / "model")
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=k)

    with pytest.raises(ScratchLMError, match="already holds a run"):
        train_dpo(DPOConfig(out_dir=str(tmp_path / "a"), **kw))
    with pytest.raises(ScratchLMError, match="usable pairs"):
        train_dpo(DPOConfig(out_dir=str(tmp_path / "c"), **{**kw, "held_out": 30}))


def test_preference_accuracy_counts_ties_as_half():
    ref = torch.zeros(4)
    assert preference_accuracy(ref, ref)["accuracy"] == 0.5
    pol = torch.tensor([1.0, -1.0, 0.0, 0.0])  # pair 0 right, pair 1 wrong
    m = preference_accuracy(pol, ref)
    assert m["accuracy"] == 0.5 and m["n"] == 2
    assert preference_accuracy(torch.tensor([1.0, 1.0, 0.0, 0.0]), ref)["accuracy"] == 1.0


def test_cli_dpo_run_and_bad_input(tmp_path, tiny_dir, capsys):
    from scratchlm.cli import main

    data = tmp_path / "pairs.jsonl"
    write_pairs(data, 12)
    out = tmp_path / "run"
    argv = ["align", "dpo", "--model", str(tiny_dir), "--data", str(data), "--out", str(out), "--set", "steps=2"]
    for kv in ("batch_size=2", "micro_batch=2", "held_out=4", "precision=fp32"):
        argv += ["--set", kv]
    assert main(argv) == 0
    assert (out / "config.toml").is_file() and (out / "model" / "config.json").is_file()
    model, _ = load_model(out / "model")  # what serve / eval load
    assert json.loads(capsys.readouterr().out)["evals"][-1]["step"] == 2
    assert main(["align", "dpo", "--resume", str(out), "--set", "steps=3"]) == 0
    assert main([*argv[:-2], "--set", "bogus=1"]) != 0  # unknown config key: an error naming it
    assert "bogus" in capsys.readouterr().err
