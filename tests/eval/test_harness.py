"""The evaluation harness on a tiny random model: log-likelihoods against a direct full-logits
computation, metrics, task files, bad input, and `scratchlm eval run` end to end with resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from shared_data import SHARED

from scratchlm.cli import main
from scratchlm.errors import ScratchLMError
from scratchlm.eval import gsm8k, mmlu
from scratchlm.eval.bpb import bits_per_byte
from scratchlm.eval.loglik import Scorer, split_space
from scratchlm.eval.run import ResultCache, parse_tasks
from scratchlm.eval.tasks import MCExample, evaluate_mc, jsonl_mc_task, score_choices
from scratchlm.model.config import ModelConfig
from scratchlm.model.model_dir import save_model_dir
from scratchlm.model.transformer import TransformerLM
from scratchlm.tokenizer.chat import ChatTokenizer
from scratchlm.tokenizer.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    # bytes + a merge of " A" so the space-joining rule matters, + end-of-text (258)
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[256] = b" A"
    vocab[257] = b"ab"
    tok = Tokenizer(vocab, [(b" ", b"A"), (b"a", b"b")], ["<|endoftext|>"])
    cfg = ModelConfig(vocab_size=259, context_length=48, d_model=32, n_layers=2, n_heads=4)
    return TransformerLM(cfg).eval(), ChatTokenizer.plain(tok)


def direct(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    full = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = F.log_softmax(model(full[:, :-1])[0].float(), -1)[-len(cont) :]
    target = torch.tensor(cont)
    return logp.gather(1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


def test_encode_pair_moves_the_space_and_splits_the_whole(setup):
    model, chat = setup
    s = Scorer(model, chat)
    assert split_space("Answer: ", "A") == ("Answer:", " A")
    ctx, cont = s.encode_pair("Answer: ", "A")
    assert cont == [256]  # " A" merged, as in running text
    assert ctx == chat.encode("Answer:")
    assert s.encode_pair("", "ab")[0] == [258]  # empty context: the start token


def test_loglikelihood_equals_direct_computation_in_batches(setup):
    model, chat = setup
    s = Scorer(model, chat, batch_size=2)
    pairs = [("Question: x\nAnswer:", c) for c in (" A", " B", " ab")] + [("short", " text ab"), ("q", "z")]
    got = s.loglikelihood(pairs)
    for (c, x), (ll, greedy) in zip(pairs, got):
        want, want_greedy = direct(model, *s.encode_pair(c, x))
        assert ll == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy
    assert s.forwards < len(pairs)  # the one-token answers to one question share a forward pass
    assert s.loglikelihood(pairs[:1]) == got[:1]  # cached


def test_truncation_left_and_refusal(setup):
    model, chat = setup
    long_ctx = "abcdefgh" * 10  # 80 bytes > context 48
    s = Scorer(model, chat)
    ((ll, _),) = s.loglikelihood([(long_ctx, " A")])
    ctx, cont = s.encode_pair(long_ctx, " A")
    inp = (ctx + cont)[:-1][-48:]  # the last 48 tokens of the model input
    with torch.no_grad():
        want = F.log_softmax(model(torch.tensor([inp]))[0, -1], -1)[cont[0]].item()
    assert s.truncated == 1 and ll == pytest.approx(want, abs=1e-4)
    with pytest.raises(ScratchLMError, match="does not fit"):
        Scorer(model, chat, truncate="error").loglikelihood([(long_ctx, " A")])


def test_metrics_acc_and_per_byte_norm():
    s = score_choices([-3.0, -4.0], [" no", " a much longer answer"], 1)
    assert s["acc"] == 0.0 and s["acc_norm"] == 1.0  # -4/21 per byte beats -3/3


def test_evaluate_mc_records(setup):
    model, chat = setup
    ex = [MCExample("Q: 1\nA:", [" A", " B"], 0, "g1"), MCExample("Q: 2\nA:", [" A", " B", " ab"], 2, "g2")]
    metrics, recs = evaluate_mc(Scorer(model, chat), ex)
    assert metrics["n"] == 2 and set(metrics["groups"]) == {"g1", "g2"}
    for r in recs:
        assert r["acc"] == float(max(range(len(r["loglikelihoods"])), key=r["loglikelihoods"].__getitem__) == r["gold"])


def test_jsonl_tasks_and_bad_input(tmp_path):
    good = tmp_path / "t.jsonl"
    good.write_text(
        '{"question": "q1", "choices": ["x", "y"], "answer": "y"}\n'
        '{"question": "q2", "choices": ["x", "y"], "answer": 0}\n'
    )
    ex = jsonl_mc_task(good, num_fewshot=1)
    assert [e.gold for e in ex] == [1, 0] and ex[0].choices == [" x", " y"]
    assert ex[0].context.startswith("Question: q2\nAnswer: x\n\n")  # the other row as its one shot
    cases = {
        '{"question": "q", "choices": ["x"], "answer": 0}\n': "at least 2 choices",
        '{"question": "q", "answer": 0}\n': "missing field 'choices'",
        '{"question": "q", "choices": ["x", "y"], "answer": 0}\n{"question": \n': r"t\.jsonl:2: not valid JSON",
        '{"question": "q", "choices": ["x", "y"], "answer": "z"}\n': "not one of the choices",
    }
    for text, msg in cases.items():
        good.write_text(text)
        with pytest.raises(ScratchLMError, match=msg):
            jsonl_mc_task(good)
    with pytest.raises(ScratchLMError, match="not found"):
        jsonl_mc_task(tmp_path / "missing.jsonl")


def test_parse_tasks():
    assert parse_tasks("mmlu, bpb:x.txt,gsm8k") == [("mmlu", ""), ("bpb", "x.txt"), ("gsm8k", "")]
    with pytest.raises(ScratchLMError, match="unknown task 'hellaswag'"):
        parse_tasks("mmlu,hellaswag")
    with pytest.raises(ScratchLMError, match="needs a file"):
        parse_tasks("bpb")


def test_sliding_bpb_equals_direct_sum(setup):
    model, chat = setup
    text = "the quick brown fox jumps over the lazy dog " * 3
    ids = chat.tokenizer.encode(text)
    seq = [258, *ids]
    context, stride = 16, 5
    want = 0.0
    for begin in range(1, len(seq), stride):
        end = min(begin + stride, len(seq))
        lo = max(0, end - 1 - context)
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([seq[lo : end - 1]]))[0], -1)
        for t in range(begin, end):
            want -= logp[t - 1 - lo, seq[t]].item()
    r = bits_per_byte(model, chat, text, context=context, stride=stride)
    assert r["bits_per_byte"] == pytest.approx(want / math.log(2) / len(text.encode()), rel=1e-5)
    short = "a document of forty bytes, or nearly so"  # fits one window: both modes are the plain sum
    one = bits_per_byte(model, chat, short, context=48, stride=48)["bits_per_byte"]
    assert one == pytest.approx(bits_per_byte(model, chat, short, context=48)["bits_per_byte"])
    with pytest.raises(ScratchLMError, match="stride"):
        bits_per_byte(model, chat, text, context=16, stride=17)


def test_gsm8k_extraction_and_pass_at_k():
    assert gsm8k.gold_answer("so 3 + 4 = 7\n#### 1,000") == "1000"
    assert gsm8k.extract_last("It costs $1,000. Then 18.") == "18"
    assert gsm8k.extract_last("The answer is 12.50.") == "12.5"
    assert gsm8k.extract_strict("blah #### -3") == "-3" and gsm8k.extract_strict("42") is None
    assert gsm8k.pass_at_k(10, 0, 1) == 0.0 and gsm8k.pass_at_k(10, 10, 3) == 1.0
    assert gsm8k.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert gsm8k.pass_at_k(4, 1, 2) == pytest.approx(0.5)


def test_mmlu_prompt_format():
    if not (SHARED / "instruct" / "mmlu" / "val").is_dir():
        pytest.skip("../shared/data/instruct/mmlu not found (only on the project's machines)")
    ex = mmlu.load(SHARED / "instruct" / "mmlu", num_fewshot=5, limit=2, only=["anatomy"])
    assert len(ex) == 2 and ex[0].choices == [" A", " B", " C", " D"]
    p = ex[0].context
    assert p.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert p.count("\nAnswer:") == 6 and p.endswith("\nD. " + p.split("\nD. ")[-1]) and p.endswith("Answer:")
    with pytest.raises(ScratchLMError, match="unknown MMLU subject"):
        mmlu.load(SHARED / "instruct" / "mmlu", only=["astrology"])


def test_mmlu_cloze_prompt_scores_answer_texts():
    if not (SHARED / "instruct" / "mmlu" / "val").is_dir():
        pytest.skip("../shared/data/instruct/mmlu not found (only on the project's machines)")
    d = SHARED / "instruct" / "mmlu"
    row = mmlu.read_csv(d / "val" / "anatomy_val.csv")[0]
    (ex,) = mmlu.load(d, num_fewshot=0, limit=1, only=["anatomy"], fmt="cloze")
    assert ex.context == f"The following are questions about anatomy.\nQuestion: {row['question'].strip()}\nAnswer:"
    assert ex.choices == [" " + c.strip() for c in row["choices"]] and ex.gold == row["answer"]
    (two,) = mmlu.load(d, num_fewshot=2, limit=1, only=["anatomy"], fmt="cloze")
    shot = mmlu.read_csv(d / "dev" / "anatomy_dev.csv")[0]
    first = f"Question: {shot['question'].strip()}\nAnswer: {shot['choices'][shot['answer']]}\n\n"
    assert two.context.count("\nAnswer:") == 3 and first in two.context and two.context.endswith(ex.context[-60:])
    with pytest.raises(ScratchLMError, match="unknown MMLU format 'letters'"):
        mmlu.load(d, limit=1, only=["anatomy"], fmt="letters")
    assert parse_tasks("mmlu_cloze:anatomy") == [("mmlu_cloze", "anatomy")]


def test_result_cache_drops_a_torn_last_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"key": "a", "acc": 1.0}\n{"key": "b", "ac')
    assert list(ResultCache(p).records) == ["a"]
    p.write_text('{"key": "a"\n{"key": "b"}\n')
    with pytest.raises(ScratchLMError, match="corrupt cache line"):
        ResultCache(p)


def test_cli_run_resume_and_compare(setup, tmp_path, capsys):
    model, chat = setup
    mdir = save_model_dir(model, chat, tmp_path / "model")
    task = tmp_path / "mc.jsonl"
    task.write_text(
        "".join(
            json.dumps({"question": f"q{i}", "choices": ["ab", "A", "b"], "answer": i % 3}) + "\n" for i in range(5)
        )
    )
    text = tmp_path / "t.txt"
    text.write_text("one document<|endoftext|>another document, a bit longer than the first one")
    out = tmp_path / "out"
    args = [
        "eval",
        "run",
        "--model",
        str(mdir),
        "--tasks",
        f"mc:{task},bpb:{text}",
        "--out",
        str(out),
        "--no-progress",
        "--context",
        "16",
        "--stride",
        "8",
    ]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["tasks"]["mc_mc"]["n"] == 5 and res["tasks"]["bpb_t"]["documents"] == 2
    assert "| mc_mc | acc |" in (out / "report.md").read_text()
    want = bits_per_byte(model, chat, text.read_text(), context=16, stride=8)["bits_per_byte"]
    assert res["tasks"]["bpb_t"]["bits_per_byte"] == pytest.approx(want)
    # resume: the cached records are reused (a changed record shows it was read back, not rescored)
    cache = out / "cache" / "mc_mc.jsonl"
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    lines[0]["acc"] = 1.0 - lines[0]["acc"]
    cache.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(args) == 0
    res2 = json.loads((out / "results.json").read_text())
    assert res2["tasks"]["mc_mc"]["acc"] == pytest.approx(res["tasks"]["mc_mc"]["acc"] + (lines[0]["acc"] * 2 - 1) / 5)
    capsys.readouterr()
    assert main(["eval", "compare", str(out), str(out)]) == 0
    assert "| mc_mc | acc |" in capsys.readouterr().out
    assert main(["eval", "run", "--model", str(mdir), "--tasks", "nope", "--out", str(out)]) == 1
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["eval", "run", "--model", str(mdir), "--tasks", "bpb:/no/such.txt", "--out", str(out)]) == 1
    assert "text file not found: /no/such.txt" in capsys.readouterr().err


def test_gsm8k_through_the_engine(setup, tmp_path):
    from scratchlm.infer.engine import LLM

    model, chat = setup
    test = tmp_path / "test.jsonl"
    test.write_text(
        "".join(json.dumps({"question": f"What is {i}?", "answer": f"It is\n#### {i}"}) + "\n" for i in range(3))
    )
    ex = gsm8k.load(test, test, num_fewshot=1, limit=2)
    assert ex[0].prompt.count("Question:") == 2 and ex[0].target == "0"
    llm = LLM(model, chat)
    with pytest.raises(ScratchLMError, match="leaves no room"):  # ~70 prompt tokens, context 48
        gsm8k.evaluate(llm, chat, ex, max_tokens=6, truncate="error")
    metrics, recs = gsm8k.evaluate(llm, chat, ex, max_tokens=6)  # cut from the left
    assert metrics["n"] == 2
    for r in recs:
        assert "Question:" not in r["output"] and r["exact_match"] == float(
            gsm8k.extract_last(r["output"]) == r["target"]
        )
