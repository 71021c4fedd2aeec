"""The same MMLU questions through lm-evaluation-harness (its `hf` backend), offline, for parity checks.

    ref = run_lm_eval_mmlu(hf_dir, mmlu_dir, subjects=["anatomy"], limit=4, workdir=tmp)
    ref["anatomy"] -> [[ll_A, ll_B, ll_C, ll_D], ...]  (per example, lm-eval's log-likelihoods)

lm-eval reads local files through custom task configs: each subject becomes a task with
`dataset_path: json` and `data_files` pointing at JSONL written here from the CSVs, the prompt of
lm-eval's own `mmlu` task (description "The following are multiple choice questions (with answers)
about <subject>.\\n\\n", `doc_to_text` "<question>\\nA. ...\\nAnswer:", choices A-D, target delimiter
" ", few-shot delimiter "\\n\\n", the first k dev examples). The weights are the scratchlm model's,
exported with `save_hf`, loaded in float32. Network access is switched off (HF_*_OFFLINE).

Normalisation choices both sides share (why numbers can differ elsewhere):
- per-token vs per-byte: `acc_norm` divides by the continuation's UTF-8 bytes (lm-eval's acc_norm uses
  characters; they agree on ASCII); `acc` is the raw sum. For MMLU's one-letter choices they coincide.
- leading space: trailing context whitespace moves into the continuation; the pair is tokenized
  whole and split at the context's length (lm-eval's `_encode_pair`).
- no BOS unless the model's tokenizer adds one (lm-eval's HF default, `add_bos_token` unset).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.eval import mmlu

TEMPLATE = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    dev: {dev}
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
num_fewshot: {shots}
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {title}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. \
{{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_tasks(mmlu_dir: Path, subjects: list[str], limit: int, shots: int, workdir: Path, split="val") -> list[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    tasks = []
    for s in subjects:
        test = mmlu.read_csv(mmlu_dir / split / f"{s}_{split}.csv")[:limit]
        dev = mmlu.read_csv(mmlu_dir / "dev" / f"{s}_dev.csv")
        for name, rows in (("test", test), ("dev", dev)):
            with open(workdir / f"{s}_{name}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        task = f"scratchlm_mmlu_{s}"
        (workdir / f"{task}.yaml").write_text(
            TEMPLATE.format(
                task=task,
                test=workdir / f"{s}_test.jsonl",
                dev=workdir / f"{s}_dev.jsonl",
                shots=shots,
                title=s.replace("_", " "),
            )
        )
        tasks.append(task)
    return tasks


def run_lm_eval_mmlu(
    hf_dir, mmlu_dir, subjects: list[str], limit: int, workdir, shots: int = 5, batch_size: int = 8
) -> dict:
    """{subject: per-example lists of the four choices' log-likelihoods, "acc": {subject: acc}, "seconds"}."""
    import time

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ScratchLMError(f"lm-eval is not installed (pip install 'scratchlm[eval]'): {e}") from None
    workdir = Path(workdir)
    tasks = write_tasks(Path(mmlu_dir), subjects, limit, shots, workdir)
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_dir},dtype=float32",
        tasks=tasks,
        task_manager=TaskManager(include_path=str(workdir)),
        batch_size=batch_size,
        log_samples=True,
        device="cpu",
    )
    seconds = time.perf_counter() - t0
    ref: dict = {"acc": {}, "seconds": seconds}
    for s, task in zip(subjects, tasks):
        samples = sorted(out["samples"][task], key=lambda x: x["doc_id"])
        ref[s] = [[float(r[0][0]) for r in x["resps"]] for x in samples]
        ref["acc"][s] = out["results"][task]["acc,none"]
    return ref
