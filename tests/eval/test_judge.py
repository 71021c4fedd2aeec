"""LLM-as-judge: a fake OpenAI-compatible server scripted to return known verdicts."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scratchlm.errors import ScratchLMError
from scratchlm.eval import judge as J


class FakeJudge:
    """Serves /v1/chat/completions; `rule(prompt) -> reply text` decides each verdict; counts requests."""

    def __init__(self, rule):
        self.rule = rule
        self.calls = 0
        owner = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.calls += 1
                text = owner.rule(body["messages"][-1]["content"])
                out = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _first(prompt: str) -> str:
    return prompt.split("[Answer A]\n")[1].split("\n\n[Answer B]")[0]


def prefers_good(prompt: str) -> str:
    return "Verdict: A" if _first(prompt).startswith("good") else "Verdict: B"


@pytest.fixture
def fake():
    servers = []

    def make(rule):
        s = FakeJudge(rule)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def _pairs(n, a="good", b="bad"):
    return [J.Pair(f"q{i}", f"{a} {i}", f"{b} {i}") for i in range(n)]


@pytest.mark.parametrize(
    "text,want",
    [
        ("Verdict: A", "A"),
        ("verdict: b", "B"),
        ("Verdict: tie", "tie"),
        ("**Verdict:** B. Because ...", "B"),
        ("After thought, [[A]]", "A"),
        ("[[C]]", "tie"),
        ("B", "B"),
        ("Verdict: A ... no wait, Verdict: B", None),
        ("I like both", None),
        ("", None),
        (None, None),
        ("Answer", None),
    ],
)
def test_parse_verdict(text, want):
    assert J.parse_verdict(text) == want


def test_combine_swap_logic():
    assert J.combine("A", "B") == "a"  # a first then a second: consistent
    assert J.combine("B", "A") == "b"
    assert J.combine("A", "A") == "tie"  # follows the position
    assert J.combine("A", None) == "tie"
    assert J.combine("tie", "B") == "tie"


def test_consistent_judge_wins_and_no_bias(fake, tmp_path):
    s = fake(prefers_good)
    res = J.judge_pairs(_pairs(6), J.JudgeConfig(base_url=s.url), tmp_path)
    assert (res["wins_a"], res["wins_b"], res["ties"]) == (6, 0, 0)
    assert res["win_rate_a"] == 1.0 and res["position_bias_rate"] == 0.0
    assert s.calls == 12
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["n_pairs"] == 6 and len(saved["pairs"]) == 6
    assert "win rate" in (tmp_path / "report.md").read_text()


def test_position_biased_judge_gives_ties(fake, tmp_path):
    s = fake(lambda p: "Verdict: A")
    res = J.judge_pairs(_pairs(5), J.JudgeConfig(base_url=s.url), tmp_path)
    assert res["ties"] == 5 and res["win_rate_a"] == 0.5
    assert res["position_bias_rate"] == 1.0 and res["first_slot_rate"] == 1.0


def test_mixed_and_junk(fake, tmp_path):
    # pair 0, 1: consistent for a; 2: for b; 3: junk in one order; 4: biased
    def rule(p):
        q = p.split("[Instruction]\n")[1].split("\n")[0]
        a_first = _first(p).startswith("good")
        return {
            "q0": "Verdict: A" if a_first else "Verdict: B",
            "q1": "[[A]]" if a_first else "[[B]]",
            "q2": "Verdict: B" if a_first else "Verdict: A",
            "q3": "Verdict: A" if a_first else "blah blah",
            "q4": "Verdict: B",
        }[q]

    s = fake(rule)
    res = J.judge_pairs(_pairs(5), J.JudgeConfig(base_url=s.url, n_boot=500), tmp_path)
    assert (res["wins_a"], res["wins_b"], res["ties"]) == (2, 1, 2)
    assert res["unparseable"] == 1
    assert res["win_rate_a"] == pytest.approx(3 / 5)
    assert res["position_bias_rate"] == pytest.approx(1 / 4)  # q4 of the 4 pairs decisive twice
    lo, hi = res["ci95"]
    assert 0 <= lo <= 0.6 <= hi <= 1


def test_cache_and_resume(fake, tmp_path):
    s = fake(prefers_good)
    cfg = J.JudgeConfig(base_url=s.url, max_requests=5)
    res = J.judge_pairs(_pairs(4), cfg, tmp_path)
    assert s.calls == 5 and res["n_pairs"] == 2 and res["incomplete"] == 2
    (tmp_path / "verdicts.jsonl").open("a").write('{"key": "torn')  # an interrupted append
    cfg.max_requests = None
    res = J.judge_pairs(_pairs(4), cfg, tmp_path)
    assert s.calls == 8 and res["n_pairs"] == 4 and res["wins_a"] == 4
    J.judge_pairs(_pairs(4), cfg, tmp_path)
    assert s.calls == 8  # everything cached
    # another judge model is another key
    J.judge_pairs(_pairs(1), J.JudgeConfig(base_url=s.url, model="other"), tmp_path)
    assert s.calls == 10


def test_unreachable_judge_keeps_going(tmp_path):
    cfg = J.JudgeConfig(base_url="http://127.0.0.1:9/v1", timeout=2, max_retries=0)
    res = J.judge_pairs(_pairs(2), cfg, tmp_path)
    assert res["n_pairs"] == 0 and res["incomplete"] == 2 and res["win_rate_a"] is None


def test_bad_inputs(tmp_path):
    with pytest.raises(ScratchLMError, match="empty"):
        J.judge_pairs([], J.JudgeConfig(base_url="http://x/v1"), tmp_path)
    inst = tmp_path / "i.jsonl"
    inst.write_text('{"instruction": "q1"}\n{"instruction": "q2"}\n')
    with pytest.raises(ScratchLMError, match="no instructions"):
        J.load_instructions(inst, limit=5, offset=10)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"output": "x"}\n')
    with pytest.raises(ScratchLMError, match="'instruction'"):
        J.load_instructions(bad)
    with pytest.raises(ScratchLMError, match="'instruction' and 'output'"):
        J.load_outputs(bad, ["q1"])
    a = tmp_path / "a.jsonl"
    a.write_text('{"instruction": "q1", "output": "x"}\n')
    with pytest.raises(ScratchLMError, match="no output for 1"):
        J.load_pairs(inst, a, a)
    with pytest.raises(ScratchLMError, match="not JSON"):
        (tmp_path / "j.jsonl").write_text("{oops\n")
        J.load_instructions(tmp_path / "j.jsonl")
    with pytest.raises(ScratchLMError, match="no such file"):
        J.load_instructions(tmp_path / "missing.jsonl")


def test_cli_with_generation(fake, tmp_path):
    from scratchlm.cli import main

    gen = fake(lambda p: "good answer" if "alpha" in p else "bad answer")
    judge = fake(prefers_good)
    inst = tmp_path / "i.jsonl"
    inst.write_text("".join(json.dumps({"instruction": f"q{i}", "output": "ref"}) + "\n" for i in range(3)))
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"bad {i}"}) + "\n" for i in range(3)))
    # model "alpha" is generated by the fake endpoint (its prompt is the instruction, so use the model name)
    gen.rule = lambda p: "good " + p
    rc = main(
        ["eval", "judge", "--instructions", str(inst), "--a", "alpha", "--a-url", gen.url, "--b", str(b)]
        + ["--judge-url", judge.url, "--out", str(tmp_path / "o")]
    )
    assert rc in (0, None)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["wins_a"] == 3 and (tmp_path / "o" / "outputs_a.jsonl").is_file()
