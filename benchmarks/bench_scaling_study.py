"""The CPU IsoFLOP study: 3 compute budgets x 5 model sizes on owt_mini, trained through
`scratchlm scaling sweep` (configs/scaling/owt_cpu_study.toml), then fitted (Approaches 2 and 3).

    python -m benchmarks.bench_scaling_study          # ~30 minutes on 2 idle CPU cores; resumes if interrupted

Data: ../shared/data/text/owt_mini.txt, last 5% of the documents held out, a 1,024-token BPE trained
on the rest (benchmarks/_work/quality/owt-1k). Runs go to benchmarks/_work/scaling-study; the runs
table, the fits and the plots are copied to benchmarks/results/scaling_study/ and summarised in
benchmarks/results/scaling_study.md. Runs use one thread each (OMP_NUM_THREADS=1): the losses do
not depend on it, and one-thread processes are not slowed 10x by a busy shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks.common import OWT_MINI, RESULTS, WORK, check_data, markdown_table
from benchmarks.quality_common import machine_line, token_files

OUT = WORK / "scaling-study"
DEST = RESULTS / "scaling_study"


def run_sweep() -> None:
    data = token_files(OWT_MINI, "owt-1k", 1024, ["<|endoftext|>"], 0.05)["data"]
    cmd = [sys.executable, "-m", "scratchlm.cli", "scaling", "sweep", "--spec", "owt_cpu_study", "--out", str(OUT),
           "--set", f"data.train={data['train']}", "--set", f"data.valid={data['valid']}"]  # fmt: skip
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def collect() -> str:
    """Copy the study's outputs into benchmarks/results/scaling_study/ and return the markdown summary."""
    study = json.loads((OUT / "study.json").read_text())
    DEST.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(OUT / "runs.jsonl") as src, open(DEST / "runs.jsonl", "w") as dst:
        for line in src:
            r = json.loads(line)
            r.pop("curve", None)  # the training curves stay in the run directories
            r.pop("run_dir", None)
            dst.write(json.dumps(r) + "\n")
            rows.append([f"{r['budget']:.2g}", r["d_model"], r["n_layers"], r["n_heads"], r.get("N"), r.get("D"),
                         f"{r['D'] / r['N']:.1f}" if r.get("N") else "-",
                         f"{r['loss']:.4f}" if r.get("loss") is not None else r.get("error", "failed")])  # fmt: skip
    for approach in ("approach2", "approach3"):
        if (OUT / approach).is_dir():
            shutil.copytree(OUT / approach, DEST / approach, dirs_exist_ok=True)
    shutil.copy(OUT / "study.json", DEST / "study.json")
    shutil.copy(OUT / "plan.json", DEST / "plan.json")
    fits = study["fits"]
    fit_rows = []
    for name, f in fits.items():
        if "error" in f:
            fit_rows.append([name, "-", "-", f["error"]])
        else:

            def est(q: dict) -> str:  # value (95% bootstrap interval)
                return f"{q['value']:.3g} ({q['ci95'][0]:.3g} - {q['ci95'][1]:.3g})"

            extra = ", ".join(f"{k} {est(v)}" for k, v in (f.get("params") or {}).items())
            fit_rows.append([name, est(f["a"]), est(f["b"]), extra or "-"])
    plots = sorted(p.relative_to(RESULTS) for p in DEST.rglob("*.png"))
    return "\n".join([
        "# IsoFLOP study on 2 CPU cores: owt_mini, 3 budgets x 5 model sizes",
        "",
        f"- {machine_line()}",
        "- rerun: `python -m benchmarks.bench_scaling_study` (the study: configs/scaling/owt_cpu_study.toml;"
        " quickstart training preset, 1,024-token BPE, context 128, one thread per run)",
        "- N counts every parameter (embeddings included, the Chinchilla convention); D = tokens trained;"
        " C = D x the model's own training FLOPs per token; loss = final validation loss (nats/token)",
        "",
        "## Runs",
        "",
        markdown_table(["budget C", "d_model", "layers", "heads", "N", "D", "D/N", "val loss"], rows),
        "",
        "## Fits (N_opt ~ C^a, D_opt ~ C^b)",
        "",
        markdown_table(["fit", "a (95% CI)", "b (95% CI)", "parameters (Approach 3, 95% CI)"], fit_rows),
        "",
        "Plots: " + ", ".join(f"[{p.name}]({p})" for p in plots),
        "",
        "## How much to trust it",
        "",
        "Each IsoFLOP slice has a clear minimum that moves to larger models as C grows, so the method works"
        " end to end at this scale. The exponents do not transfer: (1) three budgets spanning 9x give one"
        " log-decade lever arm, and the bootstrap intervals of a are about +-0.15; (2) the models are 1-3"
        " layers with d_model 16-104, where the 1,024 x d_model embedding is most of N, so N is not the"
        " quantity Chinchilla's law is about (`--columns N=N_non_embedding` refits on Kaplan's count);"
        " (3) one learning rate and schedule for every size, one seed per point (the owt_mini ablations show"
        " ~0.01-0.03 nats of seed noise, comparable to the curvature near each minimum); (4) the largest-budget"
        " runs of the smallest models see owt_mini's ~2M training tokens up to 5 times. The Approach 3 fit is"
        " poorly constrained (E's interval spans 0.5-3.6). Published large-scale values: a = 0.49-0.50"
        " (Hoffmann et al. 2022), 0.51 (Besiroglu et al. 2024 refit; benchmarks/results/scaling_fit.md).",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--collect-only", action="store_true", help="only copy and summarise a finished study")
    args = parser.parse_args()
    check_data()
    t0 = time.time()
    if not args.collect_only:
        run_sweep()
    md = collect() + ("" if args.collect_only else f"\nTotal benchmark time {time.time() - t0:.0f} s.\n")
    (RESULTS / "scaling_study.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
