"""SFT: chat encoding with assistant-only targets, packing that computes what the examples compute alone
(per-document positions and mask), the trainer (loss falls, exact resume, loadable model dir), bad input."""

import json

import pytest
import torch

from scratchlm.align.logprobs import token_log_probs
from scratchlm.align.sft import (
    Example,
    PackedLM,
    SFTConfig,
    document_positions,
    encode_chat,
    pack_examples,
    sft_messages,
    train_sft,
)
from scratchlm.errors import ScratchLMError
from scratchlm.model.model_dir import load_model, save_model_dir
from tests.serve.conftest import tiny_model_and_chat


def test_encode_chat_masks_everything_but_assistant_text():
    _, chat = tiny_model_and_chat()
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "ans"}]  # fmt: skip
    ex = encode_chat(msgs, chat, 1000)
    assert ex.ids == chat.apply_chat_template(msgs, add_generation_prompt=False, tokenize=True)
    targets = chat.decode([t for t, m in zip(ex.ids, ex.mask) if m])
    assert "yo" in targets and "ans" in targets and "hi" not in targets and "user" not in targets
    assert "assistant" not in targets  # the generation prompt is context
    cut = encode_chat(msgs, chat, 12)  # too long: the oldest tokens go
    assert cut.ids == ex.ids[-12:] and cut.mask == ex.mask[-12:]
    assert encode_chat(msgs[:1] + [{"role": "assistant", "content": ""}] + msgs[2:3], chat, 1000) is not None
    assert encode_chat(msgs, chat, 3) is None or any(encode_chat(msgs, chat, 3).mask[1:])


def test_sft_messages_forms_and_bad_records():
    recs = [{"prompt": "a", "response": "b"}, {"messages": [{"role": "user", "content": "x"}]}, {"foo": 1},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}]  # fmt: skip
    convs, problems = sft_messages(recs)
    assert len(convs) == 2 and convs[0][1] == {"role": "assistant", "content": "b"}
    assert [p.split(":")[0] for p in problems] == ["record 1", "record 2"]
    with pytest.raises(ScratchLMError, match="record 1"):
        sft_messages(recs, on_error="fatal")


def test_document_positions():
    doc = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1]])
    assert document_positions(doc).tolist() == [[0, 1, 2, 0, 1, 0, -1, -1]]


def test_packed_rows_equal_examples_alone():
    model, chat = tiny_model_and_chat()
    g = torch.Generator().manual_seed(0)
    exs = [Example(torch.randint(3, 250, (n,), generator=g).tolist(), [i % 2 == 0 for i in range(n)])
           for n in (7, 5, 9, 9)]  # fmt: skip
    rows = pack_examples(exs, seq_len=16, pad_id=0)
    assert len(rows) == 3  # 7+5 | 9 | 9 (9 + 9 > 16 + 1)
    packed = PackedLM(model)
    with torch.no_grad():
        for row, group in zip(rows, ([exs[0], exs[1]], [exs[2]], [exs[3]])):
            lp = token_log_probs(packed(row["x"][None]), row["labels"][None])[0]
            start = 0
            for ex in group:
                alone = token_log_probs(model(torch.tensor([ex.ids[:-1]])), torch.tensor([ex.ids[1:]]))[0]
                n = len(ex.ids) - 1
                torch.testing.assert_close(lp[start : start + n], alone, atol=1e-5, rtol=1e-5)
                assert row["mask"][start : start + n].tolist() == ex.mask[1:]
                start += n + 1
            assert not row["mask"][start - 1 :].any()  # across the boundary and padding: no targets
    # without the document mask a packed row would see the previous example: the test can fail
    model.set_attend(packed.doc_attend.base)
    with torch.no_grad():
        second = model(rows[0]["x"][None, 0])[0, 7:11]
        alone = model(torch.tensor([exs[1].ids[:-1]]))[0]
    assert not torch.allclose(second, alone, atol=1e-4)


def write_chats(path, n):
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"say hi {i}", "response": "hi there!"}) + "\n")
        f.write("not json\n")


def test_sft_trains_resumes_and_saves(tmp_path):
    model, chat = tiny_model_and_chat()
    tiny = save_model_dir(model, chat, tmp_path / "tiny")
    data = tmp_path / "chats.jsonl"
    write_chats(data, 12)
    kw = dict(model=str(tiny), data=str(data), steps=6, batch_size=2, micro_batch=1, seq_len=160, lr=3e-3,
              warmup_steps=1, precision="fp32", checkpoint_every=0)  # fmt: skip
    s = train_sft(SFTConfig(out_dir=str(tmp_path / "a"), **kw))
    assert s["examples"]["bad_lines"] == 1 and s["rows"] < 12  # packed: several examples per row
    recs = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["loss"] < recs[0]["loss"]
    train_sft(SFTConfig(out_dir=str(tmp_path / "b"), **kw), stop_after=2)
    train_sft(SFTConfig(out_dir=str(tmp_path / "b"), **kw), resume=True)
    a, _ = load_model(tmp_path / "a" / "model")
    b, _ = load_model(tmp_path / "b" / "model")
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=k)
    with pytest.raises(ScratchLMError, match="already holds a run"):
        train_sft(SFTConfig(out_dir=str(tmp_path / "a"), **kw))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    with pytest.raises(ScratchLMError, match="no usable SFT examples"):
        train_sft(SFTConfig(out_dir=str(tmp_path / "c"), **{**kw, "data": str(bad)}))


def test_cli_sft_run_resume_and_bad_input(tmp_path, capsys):
    from scratchlm.cli import main

    model, chat = tiny_model_and_chat()
    tiny = save_model_dir(model, chat, tmp_path / "tiny")
    data = tmp_path / "chats.jsonl"
    write_chats(data, 4)
    out = tmp_path / "run"
    argv = ["align", "sft", "--model", str(tiny), "--data", str(data), "--out", str(out), "--set", "steps=2"]
    for kv in ("batch_size=1", "micro_batch=1", "seq_len=128", "precision=fp32"):
        argv += ["--set", kv]
    assert main(argv) == 0
    assert (out / "config.toml").is_file() and (out / "model" / "config.json").is_file()
    load_model(out / "model")  # what serve / eval load
    assert json.loads(capsys.readouterr().out)["examples"]["bad_lines"] == 1
    assert main(["align", "sft", "--resume", str(out), "--set", "steps=3"]) == 0
    assert main(argv) != 0  # the run directory is taken
    assert main(["align", "sft", "--out", str(tmp_path / "x")]) != 0  # no data
    assert "no SFT data" in capsys.readouterr().err
