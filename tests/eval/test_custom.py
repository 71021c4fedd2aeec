"""Custom TOML tasks: prompt rendering and few-shot draws, scoring equal to the scorer on the rendered
prompts, generation through the engine, and bad task files."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.eval import custom
from scratchlm.eval.loglik import Scorer
from scratchlm.model.config import ModelConfig
from scratchlm.model.transformer import TransformerLM
from scratchlm.tokenizer.chat import ChatTokenizer
from scratchlm.tokenizer.tokenizer import Tokenizer

ROWS = [
    {"country": "France", "options": ["Paris", "Lyon", "Nice"], "answer": 0},
    {"country": "Italy", "options": ["Milan", "Rome", "Turin"], "answer": "Rome"},
    {"country": "Spain", "options": ["Madrid", "Seville", "Bilbao"], "answer": "0"},
    {"country": "Japan", "options": ["Osaka", "Kyoto", "Tokyo"], "answer": 2},
]
MC_TOML = """
kind = "multiple_choice"
data = "capitals.jsonl"
prompt = "Q: What is the capital of {country}?\\nA:"
choices = "options"
answer = "answer"
num_fewshot = 2
"""


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
    cfg = ModelConfig(vocab_size=257, context_length=128, d_model=32, n_layers=2, n_heads=4)
    return TransformerLM(cfg).eval(), ChatTokenizer.plain(tok)


def write_task(tmp_path, toml: str, rows=ROWS, name="capitals") -> str:
    (tmp_path / "capitals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / f"{name}.toml"
    path.write_text(toml)
    return path


def test_multiple_choice_prompts_and_shots(tmp_path):
    spec = custom.load_spec(write_task(tmp_path, MC_TOML))
    assert spec.name == "capitals" and spec.metric == "acc"
    ex = custom.mc_examples(spec)
    assert [e.gold for e in ex] == [0, 1, 0, 2]
    assert ex[1].choices == [" Milan", " Rome", " Turin"]
    # two shots from the other rows, each "prompt answer", joined by a blank line, then the question
    blocks = ex[0].context.split("\n\n")
    assert len(blocks) == 3 and blocks[2] == "Q: What is the capital of France?\nA:"
    assert all("France" not in b for b in blocks[:2])
    capitals = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo"}
    country = next(c for c in capitals if c in blocks[0])
    assert blocks[0] == f"Q: What is the capital of {country}?\nA: {capitals[country]}"
    assert [e.context for e in custom.mc_examples(spec)] == [e.context for e in ex]  # fixed seed: same shots


def test_multiple_choice_scores_equal_the_scorer(setup, tmp_path):
    model, chat = setup
    spec = custom.load_spec(write_task(tmp_path, MC_TOML.replace("num_fewshot = 2", "num_fewshot = 1")))
    metrics, records = custom.evaluate(spec, model, chat, limit=3)
    assert metrics["n"] == 3 and metrics["metric"] == "acc"
    scorer = Scorer(model, chat)
    for e, r in zip(custom.mc_examples(spec, 3), records):
        want = [ll for ll, _ in scorer.loglikelihood([(e.context, c) for c in e.choices])]
        assert r["loglikelihoods"] == pytest.approx(want, abs=1e-5)
        assert r["acc"] == float(max(range(3), key=lambda i: want[i]) == e.gold)


def test_generate_through_the_engine(setup, tmp_path):
    from scratchlm.infer.engine import LLM
    from scratchlm.infer.sampling import SamplingParams

    model, chat = setup
    rows = [{"q": f"{i} plus one", "a": str(i + 1)} for i in range(3)]
    toml = 'kind = "generate"\ndata = "capitals.jsonl"\nprompt = "{q} is"\nanswer = "a"\nmax_tokens = 5\n'
    toml += 'stop = ["\\n"]\nmetric = "contains"\nnum_fewshot = 1\n'
    spec = custom.load_spec(write_task(tmp_path, toml, rows))
    llm = LLM(model, chat)
    metrics, records = custom.evaluate(spec, model, chat, llm=llm)
    assert metrics["n"] == 3 and metrics["metric"] == "contains"
    for it, r in zip(custom.items(spec), records):
        prompt = custom.text_prompt(spec, it)
        assert prompt.endswith(f"\n\n{it.question}") and it.question == f"{it.row} plus one is"
        direct = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=5, stop=["\n"]))[0].outputs[0].text
        assert r["output"] == direct and "\n" not in direct
        assert r["contains"] == float(r["target"] in direct)


def test_generation_metrics():
    assert custom.gen_score("exact_match", " Paris \n", "Paris") == 1.0
    assert custom.gen_score("exact_match", "Paris, France", "Paris") == 0.0
    assert custom.gen_score("contains", "It is Paris, France", "Paris") == 1.0
    assert custom.gen_score("number", "so 3 + 4 = 7.", "#### 7") == 1.0
    assert custom.gen_score("number", "so $1,000", "1000") == 1.0
    assert custom.gen_score("number", "no digits", "7") == 0.0


@pytest.mark.parametrize(
    "toml, message",
    [
        (MC_TOML + 'promt = "x"\n', "unknown key 'promt' \\(did you mean 'prompt'\\?\\)"),
        (MC_TOML.replace('answer = "answer"', ""), "missing key 'answer'"),
        (MC_TOML + 'metric = "bleu"\n', "metric 'bleu' is not one of acc, acc_norm"),
        (MC_TOML.replace('kind = "multiple_choice"', 'kind = "rank"'), "kind must be one of"),
        (MC_TOML.replace('choices = "options"', 'choices = ["only one"]'), "at least 2 choices"),
        (MC_TOML.replace("num_fewshot = 2", "num_fewshot = 4"), "4-shot asked"),
        (MC_TOML.replace("{country}", "{capital}"), "names field 'capital', which the row lacks"),
        (MC_TOML.replace("{country}", "{country"), "not a valid format string"),
        ("kind = [", "not valid TOML"),
    ],
)
def test_bad_task_files(tmp_path, toml, message):
    with pytest.raises(ScratchLMError, match=message):
        custom.mc_examples(custom.load_spec(write_task(tmp_path, toml)))


def test_bad_rows(tmp_path):
    for row, message in [
        ({"country": "X", "options": ["a", "b"], "answer": 5}, "capitals.jsonl:1: answer index 5 is out of range"),
        ({"country": "X", "options": ["a", "b"], "answer": "c"}, "capitals.jsonl:1: answer 'c' is not one of"),
        ({"country": "X", "options": ["a"], "answer": 0}, "capitals.jsonl:1: the choices must be a list of at least 2"),
        ({"country": "X", "answer": 0}, "capitals.jsonl:1: missing field 'options'"),
    ]:
        spec = custom.load_spec(write_task(tmp_path, MC_TOML.replace("num_fewshot = 2", ""), [row]))
        with pytest.raises(ScratchLMError, match=message):
            custom.mc_examples(spec)
    (tmp_path / "capitals.jsonl").write_text(json.dumps(ROWS[0]) + "\n{broken\n")
    with pytest.raises(ScratchLMError, match="capitals.jsonl:2: not valid JSON"):
        custom.mc_examples(custom.load_spec(tmp_path / "capitals.toml"))
    with pytest.raises(ScratchLMError, match="task file not found"):
        custom.load_spec(tmp_path / "nope.toml")


def test_cli_custom_tasks_resume_and_convert(setup, tmp_path, capsys):
    from scratchlm.cli import main
    from scratchlm.model.model_dir import save_model_dir

    model, chat = setup
    mdir = save_model_dir(model, chat, tmp_path / "model")
    mc = write_task(tmp_path, MC_TOML.replace("num_fewshot = 2", "num_fewshot = 1"), name="cap")
    (tmp_path / "gen.jsonl").write_text(
        "".join(json.dumps({"q": f"{i} plus one", "a": str(i + 1)}) + "\n" for i in range(3))
    )
    gen = tmp_path / "gen.toml"
    gen.write_text(
        'kind = "generate"\ndata = "gen.jsonl"\nprompt = "{q} is"\nanswer = "a"\nmax_tokens = 4\nmetric = "number"\n'
    )
    piqa = tmp_path / "valid.jsonl"
    piqa.write_text(
        json.dumps({"goal": "open a jar", "sol1": "twist the lid", "sol2": "shout at it", "label": 0}) + "\n"
    )
    conv = tmp_path / "piqa.jsonl"
    assert main(["eval", "convert", "piqa", str(piqa), "--out", str(conv)]) == 0
    out = tmp_path / "out"
    args = [
        "eval",
        "run",
        "--model",
        str(mdir),
        "--tasks",
        f"task:{mc},task:{gen},mc:{conv}",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())["tasks"]
    assert res["task_cap"]["n"] == 4 and res["task_cap"]["metric"] == "acc" and res["task_cap"]["num_fewshot"] == 1
    assert res["task_gen"]["n"] == 3 and res["task_gen"]["metric"] == "number"
    assert res["mc_piqa"]["n"] == 1
    assert "| task_gen | number |" in (out / "report.md").read_text()
    # resume: generation records come back from the cache (an edited one shows it was read, not regenerated)
    cache = out / "cache" / "task_gen.jsonl"
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    lines[0]["number"] = 1.0 - lines[0]["number"]
    cache.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(args) == 0
    res2 = json.loads((out / "results.json").read_text())["tasks"]
    assert res2["task_gen"]["number"] == pytest.approx(res["task_gen"]["number"] + (lines[0]["number"] * 2 - 1) / 3)
    capsys.readouterr()
    (tmp_path / "bad.toml").write_text(MC_TOML + "shots = 3\n")
    assert (
        main(["eval", "run", "--model", str(mdir), "--tasks", f"task:{tmp_path / 'bad.toml'}", "--out", str(out)]) == 1
    )
    assert "unknown key 'shots'" in capsys.readouterr().err
    assert main(["eval", "run", "--model", str(mdir), "--tasks", "task:", "--out", str(out)]) == 1
    assert "needs a file" in capsys.readouterr().err
