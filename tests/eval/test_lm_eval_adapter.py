"""lm-eval tasks (multiple choice, rolling log-likelihood, generate_until) run through `ScratchLM` on a tiny
random model, offline over local JSONL, and agree with scratchlm's own scorer, bits per byte and engine."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install 'scratchlm[eval]')")

TASKS = {
    "tiny_mc": """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "tiny_ppl": """task: tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/ppl.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
    "tiny_gen": """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/gen.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""",
}
MC = [
    {"question": "2 + 2", "choices": ["4", "five", "22"], "answer": 0},
    {"question": "sky colour", "choices": ["blue", "green"], "answer": 0},
]
DOCS = ["a short document about cats", "x" * 150 + " and a longer one that spans windows"]
GEN = [{"q": "abc", "a": "def"}, {"q": "hello", "a": "world"}]


@pytest.fixture(scope="module")
def setup():
    from scratchlm.model.config import ModelConfig
    from scratchlm.model.transformer import TransformerLM
    from scratchlm.tokenizer.chat import ChatTokenizer
    from scratchlm.tokenizer.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
    cfg = ModelConfig(vocab_size=257, context_length=64, d_model=32, n_layers=2, n_heads=4)
    return TransformerLM(cfg).eval(), ChatTokenizer.plain(tok)


def test_lm_eval_tasks_through_the_adapter(setup, tmp_path, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from scratchlm.eval.bpb import bits_per_byte
    from scratchlm.eval.lm_eval_adapter import ScratchLM
    from scratchlm.eval.loglik import Scorer
    from scratchlm.infer.engine import LLM
    from scratchlm.infer.sampling import SamplingParams

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, chat = setup
    for name, rows in (("mc", MC), ("ppl", [{"text": d} for d in DOCS]), ("gen", GEN)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, yaml in TASKS.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.format(dir=tmp_path))
    lm = ScratchLM(model=model, chat=chat, batch_size=4)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=list(TASKS), task_manager=TaskManager(include_path=str(tmp_path)), log_samples=True
    )
    samples = {t: sorted(out["samples"][t], key=lambda s: s["doc_id"]) for t in TASKS}

    # multiple choice: lm-eval's requests, scored by scratchlm's Scorer, equal a fresh Scorer's figures
    scorer = Scorer(model, chat)
    for s, row in zip(samples["tiny_mc"], MC):
        ctx = f"Question: {row['question']}\nAnswer:"
        want = [ll for ll, _ in scorer.loglikelihood([(ctx, " " + c) for c in row["choices"]])]
        got = [float(r[0][0]) for r in s["resps"]]
        assert got == pytest.approx(want, abs=1e-5)
        assert s["acc"] == float(max(range(len(want)), key=lambda i: want[i]) == row["answer"])

    # rolling: lm-eval's bits_per_byte equals scratchlm's with window = stride = the context (64 tokens)
    ours = bits_per_byte(model, chat, "<|endoftext|>".join(DOCS), context=64, stride=64)
    assert out["results"]["tiny_ppl"]["bits_per_byte,none"] == pytest.approx(ours["bits_per_byte"], rel=1e-5)
    assert out["results"]["tiny_ppl"]["byte_perplexity,none"] == pytest.approx(2 ** ours["bits_per_byte"], rel=1e-5)
    assert ours["tokens"] > 64  # the second document spans two windows

    # generation: the engine's greedy text, cut at the stop string
    llm = LLM(model, chat)
    for s, row in zip(samples["tiny_gen"], GEN):
        want = llm.generate([row["q"]], SamplingParams(temperature=0, max_tokens=6, stop=["\n"]))[0].outputs[0].text
        assert s["resps"][0][0] == want
        assert s["exact_match"] == float(want.strip() == row["a"])


def test_rolling_equals_the_direct_sum_and_bad_arguments(setup):
    from scratchlm.errors import ScratchLMError
    from scratchlm.eval.lm_eval_adapter import ScratchLM

    model, chat = setup

    class Req:
        def __init__(self, *args):
            self.args = args

    lm = ScratchLM(model=model, chat=chat, max_length=16)
    text = "abcdefghijklmnopqrstuvwxyz0123456789"  # 36 byte tokens: 16 + 16 + 4 predicted
    seq = [lm.prefix, *chat.encode(text, add_special=False)]  # seq[t] is predicted from seq[:t]
    want = 0.0
    # (input window, predicted positions): the last window still sees 16 tokens (lm-eval's rolling rule)
    with torch.no_grad():
        for lo, first in ((0, 1), (16, 17), (20, 33)):
            logp = torch.log_softmax(model(torch.tensor([seq[lo : lo + 16]]))[0].float(), -1)  # (16, V)
            want += sum(logp[t - 1 - lo, seq[t]].item() for t in range(first, lo + 17))
    assert lm.loglikelihood_rolling([Req(text)])[0] == pytest.approx(want, rel=1e-5)
    assert not math.isnan(lm.loglikelihood_rolling([Req("")])[0])
    with pytest.raises(ScratchLMError, match="leaves no room"):
        lm.generate_until([Req("abc", {"until": ["\n"], "max_gen_toks": 20})])
    with pytest.raises(ScratchLMError, match="needs model="):
        ScratchLM()
    with pytest.raises(ScratchLMError, match="also needs chat="):
        ScratchLM(model=model)
