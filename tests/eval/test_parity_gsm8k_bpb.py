"""Parity with lm-evaluation-harness's `hf` backend on real weights (SmolLM2-135M-Instruct exported with
save_hf), offline over local JSONL, a handful of examples:

- GSM8K: the log-likelihood of each reference solution after a 1-shot prompt (~300-token contexts,
  ~50-token continuations, unlike MMLU's one-token answers) within 1e-4 of lm-eval's; greedy
  generations (scratchlm's engine vs transformers' generate) and their exact match identical. With the
  5-shot prompt (~1,100-token contexts) the sums differ by 1e-4 to 6e-4, in float32 and in float64
  alike: transformers computes the RoPE angles position x inv_freq in float32 (an angle error of ~6e-5
  rad at position 1,000), scratchlm in float64; the 1-shot contexts keep that below the tolerance.
- bits per byte of owt_mini documents in 128-token rolling windows: lm-eval's `bits_per_byte` (log2 of
  its `byte_perplexity`) equals scratchlm's `bits_per_byte(context=128, stride=128)`.

lm-eval's hf backend conditions a document on the tokenizer's BOS whenever the tokenizer names one
(SmolLM2's `<|im_start|>`); scratchlm on the model's start token (`bpb.start_token`: end-of-text for
SmolLM2, which adds no BOS). The test passes scratchlm's start token to lm-eval (`prefix_token_id`) to
compare like with like. Skips without lm-eval, the shared data, or the pulled model."""

from __future__ import annotations

import json

import pytest
from pretrained_files import pulled_model_dir
from shared_data import shared_file

pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install 'scratchlm[eval]')")

N_GSM8K, SHOTS, MAX_GEN, N_GEN = 3, 1, 40, 1
N_DOCS, DOC_CHARS, WINDOW = 2, 900, 128

GSM8K_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/{test}
    train: {dir}/gsm8k_shots.jsonl
test_split: test
fewshot_split: train
fewshot_config:
  sampler: first_n
num_fewshot: {shots}
output_type: {output_type}
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
generation_kwargs:
  until: ["Question:", "</s>", "<|im_end|>"]
  do_sample: false
  max_gen_toks: {max_gen}
metric_list:
  - metric: {metric}
"""
PPL_YAML = """task: owt_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/owt.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


@pytest.fixture(scope="module")
def both(request, tmp_path_factory):
    """scratchlm's model and the reference figures of one lm-eval run over all three tasks."""
    import os

    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    from scratchlm.eval import gsm8k
    from scratchlm.eval.bpb import documents, start_token
    from scratchlm.model.hf_export import save_hf_with_tokenizer
    from scratchlm.model.model_dir import load_model

    test, train = shared_file("instruct/gsm8k_test.jsonl"), shared_file("instruct/gsm8k_train.jsonl")
    owt = shared_file("text/owt_mini.txt")
    model, chat = load_model(str(pulled_model_dir(request.config, "smollm2-135m-instruct")))
    d = tmp_path_factory.mktemp("parity")
    examples = gsm8k.load(test, train, SHOTS, N_GSM8K)
    rows = [json.loads(x) for x in test.read_text().splitlines()[:N_GSM8K]]
    # the same shots as scratchlm's seeded draw, given to lm-eval in order (its first_n sampler)
    shot_rows = gsm8k_shots(train)
    (d / "gsm8k_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "gsm8k_gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:N_GEN]))
    (d / "gsm8k_shots.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shot_rows))
    docs = [doc[:DOC_CHARS].strip() for doc in documents(owt.read_text(encoding="utf-8"))[:N_DOCS]]
    (d / "owt.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    for task, test_file, output_type, metric in (
        ("gsm8k_ll", "gsm8k_test.jsonl", "loglikelihood", "perplexity"),
        ("gsm8k_gen", "gsm8k_gen.jsonl", "generate_until", "exact_match"),
    ):
        yaml = GSM8K_YAML.format(
            task=task, dir=d, test=test_file, shots=SHOTS, output_type=output_type, max_gen=MAX_GEN, metric=metric
        )
        (d / f"{task}.yaml").write_text(yaml)
    (d / "owt_ppl.yaml").write_text(PPL_YAML.format(dir=d))
    save_hf_with_tokenizer(model, chat, d / "hf")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tm = TaskManager(include_path=str(d))
    args = f"pretrained={d / 'hf'},dtype=float32,max_length={WINDOW},prefix_token_id={start_token(chat)}"
    ref_ppl = lm_eval.simple_evaluate(model="hf", model_args=args, tasks=["owt_ppl"], task_manager=tm, device="cpu")
    args = f"pretrained={d / 'hf'},dtype=float32"
    ref = lm_eval.simple_evaluate(
        model="hf", model_args=args, tasks=["gsm8k_ll", "gsm8k_gen"], task_manager=tm, log_samples=True,
        batch_size=1, device="cpu",
    )  # fmt: skip
    torch.set_grad_enabled(True)
    return model, chat, examples, rows, docs, ref, ref_ppl


def gsm8k_shots(train):
    import random

    from scratchlm.eval.tasks import read_jsonl

    return random.Random(1234).sample(read_jsonl(train), SHOTS)  # gsm8k.load's draw (seed 1234)


def test_gsm8k_loglikelihoods_match_lm_eval(both):
    from scratchlm.eval.loglik import Scorer

    model, chat, examples, rows, _, ref, _ = both
    samples = sorted(ref["samples"]["gsm8k_ll"], key=lambda s: s["doc_id"])
    assert len(samples) == N_GSM8K
    # lm-eval's `loglikelihood` requests put no target delimiter before the continuation
    ours = Scorer(model, chat).loglikelihood([(ex.prompt, r["answer"]) for ex, r in zip(examples, rows)])
    for (ll, greedy), s in zip(ours, samples):
        assert s["arguments"][0] == (examples[s["doc_id"]].prompt, rows[s["doc_id"]]["answer"])  # the same request
        assert ll == pytest.approx(float(s["resps"][0][0][0]), abs=1e-4)
        assert greedy == bool(s["resps"][0][0][1])


def test_gsm8k_greedy_generations_match_lm_eval(both):
    from scratchlm.eval import gsm8k
    from scratchlm.infer.engine import LLM

    model, chat, examples, rows, _, ref, _ = both
    samples = sorted(ref["samples"]["gsm8k_gen"], key=lambda s: s["doc_id"])
    assert len(samples) == N_GEN
    _, records = gsm8k.evaluate(LLM(model, chat), chat, examples[:N_GEN], max_tokens=MAX_GEN)
    for r, s in zip(records, samples):
        assert r["output"] == s["resps"][0][0]
        assert r["exact_match_strict"] == float(gsm8k.extract_strict(s["resps"][0][0]) == r["target"])


def test_bits_per_byte_matches_lm_eval(both):
    from scratchlm.eval.bpb import bits_per_byte

    model, chat, _, _, docs, _, ref_ppl = both
    ours = bits_per_byte(model, chat, "<|endoftext|>".join(docs), context=WINDOW, stride=WINDOW)
    assert ours["tokens"] > 2 * WINDOW  # several windows per document
    theirs = ref_ppl["results"]["owt_ppl"]
    assert ours["bits_per_byte"] == pytest.approx(theirs["bits_per_byte,none"], rel=1e-5)
    assert 2 ** ours["bits_per_byte"] == pytest.approx(theirs["byte_perplexity,none"], rel=1e-5)
