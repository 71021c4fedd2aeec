"""LLM-as-judge demo: SmolLM2-135M-Instruct behind `scratchlm serve` generates two answer sets (greedy vs
temperature 1.5) for a slice of alpaca_eval and judges them pairwise with position swapping; a sanity arm
pits the greedy answers against empty answers, which any useful judge must prefer. Writes
benchmarks/results/judge.md (+ .json).

    nice .venv/bin/python benchmarks/bench_judge.py --n 24
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from pathlib import Path

import torch
import uvicorn

from scratchlm.eval import judge as J
from scratchlm.model import pretrained
from scratchlm.model.model_dir import load_model_dir
from scratchlm.serve.app import create_app
from scratchlm.serve.config import ServeConfig

HERE = Path(__file__).parent
DATA = HERE.parent.parent / "shared" / "data" / "instruct" / "alpaca_eval.jsonl"
NAME = "smollm2-135m-instruct"


def serve(model, chat) -> tuple[uvicorn.Server, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(model, chat, ServeConfig(kv_cache_mb=128), model_name=NAME)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/v1"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--work", default=str(HERE / "_work" / "judge"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    model, chat = load_model_dir(pretrained.model_path(NAME))
    server, url = serve(model, chat)
    t0 = time.perf_counter()
    insts = J.load_instructions(DATA, args.n)
    greedy = J.generate_outputs(insts, url, NAME, work / "greedy.jsonl", max_tokens=args.max_tokens)
    hot = J.generate_outputs(insts, url, NAME, work / "temp1.5.jsonl", max_tokens=args.max_tokens, temperature=1.5)
    t_gen = time.perf_counter() - t0
    cfg = J.JudgeConfig(base_url=url, model=NAME, timeout=300)
    arms = {
        "sanity: greedy vs empty answer": [J.Pair(i, a, "") for i, a in zip(insts, greedy, strict=True)],
        "greedy vs temperature 1.5": [J.Pair(i, a, b) for i, a, b in zip(insts, greedy, hot, strict=True)],
    }
    results = {}
    for name, pairs in arms.items():
        t = time.perf_counter()
        res = J.judge_pairs(pairs, cfg, work / name.split(":")[0].replace(" ", "_"), names=name.split(" vs "))
        res["seconds"] = time.perf_counter() - t
        results[name] = res
    server.should_exit = True
    lines = [
        "# LLM-as-judge (scratchlm eval judge) on alpaca_eval",
        "",
        f"Judge and generator: {NAME} behind `scratchlm serve` (in-process, CPU, 1 thread), fixed judge prompt",
        f"(scratchlm/eval/judge.py JUDGE_PROMPT), greedy verdicts, max {args.max_tokens} answer tokens, first "
        f"{args.n} alpaca_eval instructions. Generation of both answer sets: {t_gen:.0f} s.",
        "",
        "| comparison | pairs | A wins / B wins / ties | win rate A (95% CI) | position bias | first-slot "
        "rate | unparseable | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ci = r["ci95"]
        pb = "n/a" if r["position_bias_rate"] is None else f"{100 * r['position_bias_rate']:.0f}%"
        fs = "n/a" if r["first_slot_rate"] is None else f"{100 * r['first_slot_rate']:.0f}%"
        lines.append(
            f"| {name} | {r['n_pairs']} | {r['wins_a']} / {r['wins_b']} / {r['ties']} | "
            f"{100 * r['win_rate_a']:.0f}% ({100 * ci[0]:.0f}-{100 * ci[1]:.0f}%) | {pb} of "
            f"{r['position_bias_pairs']} | {fs} | {r['unparseable']} / {r['n_judgements']} | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        "Position bias = share of pairs decisive in both orders whose two verdicts name the same slot although "
        "the answers swapped places (0% for a consistent judge, 100% for one that always picks a slot); "
        "first-slot rate = share of decisive verdicts naming the first answer. A model wins a pair only when both "
        "orders agree. The sanity arm is the honest test of the judge: a useful judge gives the greedy answers a "
        "win rate near 100% against empty answers.",
        "",
    ]
    (HERE / "results" / "judge.md").write_text("\n".join(lines))
    (HERE / "results" / "judge.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
