"""LLM-as-judge pairwise comparison (AlpacaEval / MT-Bench style) with position-swap debiasing.

    from scratchlm.eval.judge import JudgeConfig, load_pairs, judge_pairs
    pairs = load_pairs("alpaca_eval.jsonl", "a.jsonl", "b.jsonl", limit=30)
    res = judge_pairs(pairs, JudgeConfig(base_url="http://127.0.0.1:8000/v1", model="judge"), out="evals/judge")
    res["win_rate_a"], res["ci95"], res["position_bias_rate"]

Every pair is judged twice, (a, b) and (b, a): a model wins only when both orders name it, anything else
is a tie. A verdict "follows the position" when both orders pick the same slot (first or second) although
the answers swapped places: its rate is the judge's position bias. Unparseable replies are counted, never
fatal. Verdicts are cached in `verdicts.jsonl` keyed by sha256(judge, prompt): a rerun asks only the
missing ones. Outputs come from JSONL files (`{"instruction", "output"}` per line) or any OpenAI-compatible
endpoint (`generate_outputs`, e.g. `scratchlm serve`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from scratchlm.errors import ScratchLMError

JUDGE_PROMPT = (
    "You are a fair judge. Compare two AI assistant answers to the user's instruction and decide which "
    "answer is more helpful, correct and relevant. Ignore answer length and the order of the answers.\n\n"
    "[Instruction]\n{instruction}\n\n[Answer A]\n{first}\n\n[Answer B]\n{second}\n\n"
    'Reply with exactly one line: "Verdict: A", "Verdict: B" or "Verdict: tie".'
)


@dataclass
class JudgeConfig:
    base_url: str
    model: str = "judge"
    api_key: str = "none"
    max_tokens: int = 16
    temperature: float = 0.0
    timeout: float = 60.0  # seconds per request
    max_retries: int = 2
    max_requests: int | None = None  # stop after this many uncached requests (resume later)
    prompt: str = JUDGE_PROMPT
    n_boot: int = 2000
    seed: int = 0


@dataclass
class Pair:
    instruction: str
    a: str
    b: str


def _read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise ScratchLMError(f"{p}: no such file")
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScratchLMError(f"{p}:{i}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ScratchLMError(f"{p}:{i}: expected a JSON object")
        rows.append(row)
    return rows


def load_instructions(path: str | Path, limit: int | None = None, offset: int = 0) -> list[str]:
    rows = _read_jsonl(path)[offset:]
    rows = rows[:limit] if limit is not None else rows
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
            raise ScratchLMError(f"{path}: row {offset + i + 1} has no 'instruction' string")
        out.append(r["instruction"])
    if not out:
        raise ScratchLMError(f"{path}: the slice (offset {offset}, limit {limit}) holds no instructions")
    return out


def load_outputs(path: str | Path, instructions: list[str]) -> list[str]:
    """Outputs of one model, matched to `instructions` by the instruction text."""
    by_inst = {}
    for i, r in enumerate(_read_jsonl(path)):
        if not isinstance(r.get("instruction"), str) or not isinstance(r.get("output"), str):
            raise ScratchLMError(f"{path}: row {i + 1} needs 'instruction' and 'output' strings")
        by_inst[r["instruction"]] = r["output"]
    missing = [s for s in instructions if s not in by_inst]
    if missing:
        raise ScratchLMError(f"{path}: no output for {len(missing)} instruction(s), first: {missing[0][:60]!r}")
    return [by_inst[s] for s in instructions]


def load_pairs(instructions: str | Path, a: str | Path, b: str | Path, limit=None, offset=0) -> list[Pair]:
    insts = load_instructions(instructions, limit, offset)
    return [Pair(i, x, y) for i, x, y in zip(insts, load_outputs(a, insts), load_outputs(b, insts), strict=True)]


def _client(base_url: str, api_key: str, timeout: float, max_retries: int):
    try:
        from openai import OpenAI
    except ImportError:
        raise ScratchLMError("the judge needs the `openai` package: pip install openai") from None
    return OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)


def generate_outputs(
    instructions: list[str],
    base_url: str,
    model: str,
    out: str | Path,
    api_key: str = "none",
    max_tokens: int = 128,
    temperature: float = 0.0,
    timeout: float = 120.0,
) -> list[str]:
    """Ask an OpenAI-compatible endpoint for one answer per instruction; write `out` JSONL (resumable)."""
    from scratchlm.io import atomic_write

    out = Path(out)
    done = {r["instruction"]: r["output"] for r in _read_jsonl(out)} if out.is_file() else {}
    client = _client(base_url, api_key, timeout, 2)
    for inst in instructions:
        if inst in done:
            continue
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": inst}],
            max_tokens=max_tokens,
            temperature=temperature,
        )
        done[inst] = r.choices[0].message.content or ""
        with atomic_write(out, "w", encoding="utf-8") as f:  # after each answer: an interrupted run keeps them
            for k, v in done.items():
                f.write(json.dumps({"instruction": k, "output": v}) + "\n")
    return [done[s] for s in instructions]


_VERDICT = re.compile(r"verdict\s*[:=]?\s*\**\s*\[*\s*(A|B|tie)\b", re.IGNORECASE)
_BRACKET = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)  # MT-Bench's [[A]] / [[C]] = tie
_BARE = re.compile(r"^\W*(A|B|tie)\W*$", re.IGNORECASE)


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B', 'tie', or None when the reply names no verdict (or names both)."""
    if not text:
        return None
    for rx in (_VERDICT, _BRACKET):
        found = {m.group(1).lower() for m in rx.finditer(text)}
        found = {"tie" if v == "c" else v for v in found}
        if len(found) == 1:
            v = found.pop()
            return v.upper() if v in ("a", "b") else "tie"
        if len(found) > 1:
            return None  # contradicts itself
    m = _BARE.match(text.strip().splitlines()[0]) if text.strip() else None
    if m:
        v = m.group(1).lower()
        return v.upper() if v in ("a", "b") else "tie"
    return None


def _key(cfg: JudgeConfig, prompt: str) -> str:
    return hashlib.sha256(json.dumps([cfg.model, prompt]).encode()).hexdigest()


class VerdictCache:
    """Append-only JSONL of {key, reply}; a torn last line (interrupted write) is skipped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.items: dict[str, str] = {}
        if self.path.is_file():
            text = self.path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # torn last line: end it so the next append stands alone
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("\n")
            for line in text.splitlines():
                try:
                    row = json.loads(line)
                    self.items[row["key"]] = row["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def add(self, key: str, reply: str) -> None:
        self.items[key] = reply
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "reply": reply}) + "\n")
            f.flush()


def combine(v_ab: str | None, v_ba: str | None) -> str:
    """Debiased outcome for model a: 'a', 'b' or 'tie'. v_ab judged (a first), v_ba judged (b first)."""
    if v_ab == "A" and v_ba == "B":
        return "a"
    if v_ab == "B" and v_ba == "A":
        return "b"
    return "tie"


def bootstrap_ci(scores: list[float], n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean of per-pair scores (1 win, 0.5 tie, 0 loss)."""
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(scores[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return means[int(0.025 * (n_boot - 1))], means[int(round(0.975 * (n_boot - 1)))]


def judge_pairs(pairs: list[Pair], cfg: JudgeConfig, out: str | Path, client=None, names=("a", "b")) -> dict:
    """Judge every pair in both orders; write results.json, report.md, verdicts.jsonl under `out`."""
    if not pairs:
        raise ScratchLMError("no pairs to judge (empty slice)")
    out = Path(out)
    cache = VerdictCache(out / "verdicts.jsonl")
    asked = 0
    rows, incomplete = [], 0
    for p in pairs:
        verdicts = []
        for first, second in ((p.a, p.b), (p.b, p.a)):
            prompt = cfg.prompt.format(instruction=p.instruction, first=first, second=second)
            key = _key(cfg, prompt)
            if key not in cache.items:
                if cfg.max_requests is not None and asked >= cfg.max_requests:
                    verdicts.append("pending")
                    continue
                if client is None:
                    client = _client(cfg.base_url, cfg.api_key, cfg.timeout, cfg.max_retries)
                reply = _ask(client, cfg, prompt)
                asked += 1
                if reply is None:  # a transport error: not cached, asked again on resume
                    verdicts.append("pending")
                    continue
                cache.add(key, reply)
            verdicts.append(parse_verdict(cache.items[key]))
        if "pending" in verdicts:
            incomplete += 1
            continue
        rows.append({"instruction": p.instruction, "ab": verdicts[0], "ba": verdicts[1]})
    res = aggregate(rows, cfg, names)
    res["incomplete"] = incomplete
    res["requests_made"] = asked
    _write(out, res, rows)
    return res


def _ask(client, cfg: JudgeConfig, prompt: str) -> str | None:
    import openai

    try:
        r = client.chat.completions.create(
            model=cfg.model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
        )
    except (openai.APIError, openai.APIConnectionError, openai.APITimeoutError) as e:
        print(f"judge: request failed ({type(e).__name__}: {e}); left for the next run")
        return None
    if not r.choices:
        return ""
    return r.choices[0].message.content or ""


def aggregate(rows: list[dict], cfg: JudgeConfig, names=("a", "b")) -> dict:
    n = len(rows)
    outcomes = [combine(r["ab"], r["ba"]) for r in rows]
    for r, o in zip(rows, outcomes, strict=True):
        r["outcome"] = o
    wins, losses = outcomes.count("a"), outcomes.count("b")
    ties = n - wins - losses
    unparsed = sum((r["ab"] is None) + (r["ba"] is None) for r in rows)
    # Both orders decisive: the verdict follows the position when it names the same slot twice.
    decisive = [r for r in rows if r["ab"] in ("A", "B") and r["ba"] in ("A", "B")]
    follows = sum(r["ab"] == r["ba"] for r in decisive)
    first = sum((r["ab"] == "A") + (r["ba"] == "A") for r in rows)
    n_dec = sum((r["ab"] in ("A", "B")) + (r["ba"] in ("A", "B")) for r in rows)
    scores = [{"a": 1.0, "b": 0.0, "tie": 0.5}[o] for o in outcomes]
    win_rate = sum(scores) / n if n else None
    return {
        "judge": cfg.model,
        "models": list(names),
        "n_pairs": n,
        "n_judgements": 2 * n,
        "wins_a": wins,
        "wins_b": losses,
        "ties": ties,
        "win_rate_a": win_rate,
        "ci95": list(bootstrap_ci(scores, cfg.n_boot, cfg.seed)) if n else None,
        "unparseable": unparsed,
        "position_bias_rate": follows / len(decisive) if decisive else None,
        "position_bias_pairs": len(decisive),
        "first_slot_rate": first / n_dec if n_dec else None,
        "agreement_rate": (len(decisive) - follows) / len(decisive) if decisive else None,
    }


def _fmt(x, pct=True) -> str:
    return "n/a" if x is None else (f"{100 * x:.1f}%" if pct else str(x))


def report(res: dict) -> str:
    a, b = res["models"]
    ci = res["ci95"]
    lines = [
        f"# Pairwise judge: {a} vs {b} (judge `{res['judge']}`)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| pairs judged (x2 orders) | {res['n_pairs']} |",
        f"| {a} wins / {b} wins / ties | {res['wins_a']} / {res['wins_b']} / {res['ties']} |",
        f"| win rate of {a} (tie = 1/2) | {_fmt(res['win_rate_a'])} |",
        f"| 95% CI (bootstrap) | {_fmt(ci[0]) if ci else 'n/a'} .. {_fmt(ci[1]) if ci else 'n/a'} |",
        f"| position bias (same slot in both orders) | {_fmt(res['position_bias_rate'])} "
        f"of {res['position_bias_pairs']} decisive pairs |",
        f"| first-slot rate | {_fmt(res['first_slot_rate'])} |",
        f"| unparseable verdicts | {res['unparseable']} of {res['n_judgements']} |",
        f"| pairs left for a rerun | {res.get('incomplete', 0)} |",
        "",
        "A model wins a pair only when the judge names it in both orders; disagreement is a tie.",
        "",
    ]
    return "\n".join(lines)


def _write(out: Path, res: dict, rows: list[dict]) -> None:
    from scratchlm.io import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "results.json", "w", encoding="utf-8") as f:
        json.dump({**res, "pairs": rows}, f, indent=1)
    with atomic_write(out / "report.md", "w", encoding="utf-8") as f:
        f.write(report(res))
