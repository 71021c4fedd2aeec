"""HellaSwag, ARC and PIQA: their published files turned into the harness's multiple-choice JSONL
(`tasks.py`: one {"context" or "question", "choices", "answer"} object a line), and the code that
downloads them for users with internet.

    scratchlm eval download hellaswag --out data/hellaswag_val.jsonl          # needs internet
    scratchlm eval convert piqa valid.jsonl --labels valid-labels.lst --out data/piqa_val.jsonl
    scratchlm eval run --model M --tasks mc:data/hellaswag_val.jsonl,mc:data/piqa_val.jsonl --out DIR

The prompts are lm-evaluation-harness's (its `hellaswag`, `arc_easy` / `arc_challenge` and `piqa`
tasks), so the figures compare with the ones published through it:

- HellaSwag (Zellers et al. 2019): the text the endings continue is
  `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`, each ending `preprocess`ed;
  `preprocess` strips, turns the WikiHow artifact " [title]" into ". ", drops other "[...]" tags and
  collapses a double space. The test split has no labels, so only train and validation convert.
- ARC (Clark et al. 2018): "Question: <stem>\\nAnswer:", the choices' texts; the gold index is the
  position of `answerKey` among the choice labels (which are "A".."E" or "1".."5").
- PIQA (Bisk et al. 2020): "Question: <goal>\\nAnswer:", choices [sol1, sol2]; the labels of the
  original release are a separate file, one 0/1 a line.

Sources (`SOURCES`): HellaSwag and PIQA from their authors' original JSONL files; ARC from the Hugging
Face dataset viewer's rows API (`allenai/ai2_arc`, 100 rows a page), since the authors' own zip
bundles a 1.4 GB corpus. Downloads go through `urllib` (no extra dependency) and end in one clear
error naming the URL when there is no network; the converted file is written atomically.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_write, check_input_file

ROWS_API = "https://datasets-server.huggingface.co"  # the Hugging Face dataset viewer
ROWS_PAGE = 100  # the most rows the viewer returns per request


# ---------------------------------------------------------------------------------------- converters
def hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _need(row: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ScratchLMError(f"{where}: missing field {missing[0]!r}")


def hellaswag_row(row: dict, where: str) -> dict:
    _need(row, ("activity_label", "ctx_a", "ctx_b", "endings", "label"), where)
    if row["label"] in ("", None):
        raise ScratchLMError(f"{where}: no label (HellaSwag's test split is unlabelled: use validation)")
    context = hellaswag_clean(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
    return {
        "context": context,
        "choices": [hellaswag_clean(e) for e in row["endings"]],
        "answer": int(row["label"]),
        "id": row.get("ind", row.get("source_id")),
    }


def arc_row(row: dict, where: str) -> dict:
    """A row of the dataset viewer ({"question": str, "choices": {"text", "label"}}) or of the authors'
    JSONL ({"question": {"stem", "choices": [{"text", "label"}]}})."""
    _need(row, ("question", "answerKey"), where)
    q = row["question"]
    if isinstance(q, dict):  # the authors' format
        stem, texts, labels = q.get("stem"), [c["text"] for c in q["choices"]], [c["label"] for c in q["choices"]]
    else:
        _need(row, ("choices",), where)
        stem, texts, labels = q, list(row["choices"]["text"]), list(row["choices"]["label"])
    if row["answerKey"] not in labels:
        raise ScratchLMError(f"{where}: answerKey {row['answerKey']!r} is not one of the labels {labels}")
    return {"question": stem, "choices": texts, "answer": labels.index(row["answerKey"]), "id": row.get("id")}


def piqa_row(row: dict, where: str) -> dict:
    _need(row, ("goal", "sol1", "sol2", "label"), where)
    label = int(row["label"])
    if label not in (0, 1):
        raise ScratchLMError(f"{where}: PIQA label must be 0 or 1, got {row['label']!r}")
    return {"question": row["goal"], "choices": [row["sol1"], row["sol2"]], "answer": label, "id": row.get("id")}


CONVERTERS: dict[str, Callable[[dict, str], dict]] = {
    "hellaswag": hellaswag_row,
    "arc_easy": arc_row,
    "arc_challenge": arc_row,
    "piqa": piqa_row,
}


def _parse_jsonl(text: str, where: str) -> list[dict]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScratchLMError(f"{where}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ScratchLMError(f"{where}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _attach_labels(rows: list[dict], labels_text: str, where: str) -> None:
    labels = [x.strip() for x in labels_text.splitlines() if x.strip()]
    if len(labels) != len(rows):
        raise ScratchLMError(f"{where}: {len(labels)} labels for {len(rows)} examples")
    for row, label in zip(rows, labels):
        row["label"] = label


def convert_rows(task: str, rows: list[dict], where: str) -> list[dict]:
    if task not in CONVERTERS:
        raise ScratchLMError(f"unknown task {task!r}: expected one of {', '.join(CONVERTERS)}")
    if not rows:
        raise ScratchLMError(f"{where}: no examples")
    out = []
    for i, row in enumerate(rows, 1):
        rec = CONVERTERS[task](row, f"{where}:{i}")
        if len(rec["choices"]) < 2:
            raise ScratchLMError(f"{where}:{i}: a multiple-choice example needs at least 2 choices")
        out.append({k: v for k, v in rec.items() if v is not None})
    return out


def convert_file(task: str, path: str | Path, labels: str | Path | None = None) -> list[dict]:
    """Rows of a local file in the task's published format (PIQA: `labels` is its -labels.lst file)."""
    path = check_input_file(path, f"{task} file")
    rows = _parse_jsonl(path.read_text(encoding="utf-8"), str(path))
    if task == "piqa" and not all("label" in r for r in rows):
        if labels is None:
            raise ScratchLMError(f"{path}: PIQA rows carry no label: give its -labels.lst file (--labels)")
        lp = check_input_file(labels, "PIQA labels file")
        _attach_labels(rows, lp.read_text(encoding="utf-8"), str(lp))
    return convert_rows(task, rows, str(path))


def write_mc_jsonl(records: list[dict], out: str | Path) -> Path:
    out = Path(out)
    with atomic_write(out, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return out


# ---------------------------------------------------------------------------------------- downloads
@dataclass(frozen=True)
class Source:
    """Where a task's split comes from: `files` (url templates of the authors' files: the examples and,
    for PIQA, the labels) or `rows` (a dataset on the Hugging Face viewer: (dataset, config))."""

    splits: tuple[str, ...]
    files: tuple[str, ...] = ()
    rows: tuple[str, str] | None = None


SOURCES: dict[str, Source] = {
    "hellaswag": Source(
        ("validation", "train"),
        files=("https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{short}.jsonl",),
    ),
    "piqa": Source(
        ("validation", "train"),
        files=(
            "https://yonatanbisk.com/piqa/data/{short}.jsonl",
            "https://yonatanbisk.com/piqa/data/{short}-labels.lst",
        ),
    ),
    "arc_easy": Source(("test", "validation", "train"), rows=("allenai/ai2_arc", "ARC-Easy")),
    "arc_challenge": Source(("test", "validation", "train"), rows=("allenai/ai2_arc", "ARC-Challenge")),
}
SHORT = {"validation": "val", "train": "train", "test": "test"}  # the authors' file names
SHORT_PIQA = {"validation": "valid", "train": "train"}


def fetch(url: str, timeout: float = 60.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        raise ScratchLMError(f"download failed: {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ScratchLMError(
            f"download failed: {url}: {reason}. Without internet, fetch the file elsewhere and use "
            "`scratchlm eval convert`"
        ) from None


def _rows_api(dataset: str, config: str, split: str, base: str, timeout: float, limit: int | None) -> list[dict]:
    rows, offset, total = [], 0, None
    while total is None or offset < total:
        length = ROWS_PAGE if limit is None else min(ROWS_PAGE, limit - offset)
        if length <= 0:
            break
        query = urllib.parse.urlencode(
            {"dataset": dataset, "config": config, "split": split, "offset": offset, "length": length}
        )
        url = f"{base}/rows?{query}"
        try:
            page = json.loads(fetch(url, timeout))
            total = int(page["num_rows_total"])
            got = [r["row"] for r in page["rows"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ScratchLMError(f"download failed: {url}: unexpected answer ({type(e).__name__}: {e})") from None
        if not got:
            break
        rows += got
        offset += len(got)
    return rows


def download(
    task: str,
    split: str = "validation",
    out: str | Path | None = None,
    limit: int | None = None,
    base: str | None = None,
    timeout: float = 60.0,
) -> list[dict]:
    """Download `split` of `task`, convert it and (with `out`) write the harness's JSONL. `base` replaces
    the host part of the source URLs (a mirror, or a local server in the tests)."""
    if task not in SOURCES:
        raise ScratchLMError(f"unknown task {task!r}: expected one of {', '.join(SOURCES)}")
    src = SOURCES[task]
    if split not in src.splits:
        raise ScratchLMError(f"{task} has no labelled split {split!r}: expected one of {', '.join(src.splits)}")
    if src.rows is not None:
        dataset, config = src.rows
        rows = _rows_api(dataset, config, split, (base or ROWS_API).rstrip("/"), timeout, limit)
        where = f"{dataset}/{config}/{split}"
    else:
        short = (SHORT_PIQA if task == "piqa" else SHORT)[split]
        urls = [u.format(short=short) for u in src.files]
        if base:
            urls = [base.rstrip("/") + "/" + u.rsplit("/", 1)[1] for u in urls]
        texts = [fetch(u, timeout).decode("utf-8") for u in urls]
        rows = _parse_jsonl(texts[0], urls[0])
        if len(texts) > 1:
            _attach_labels(rows, texts[1], urls[1])
        where = urls[0]
    records = convert_rows(task, rows[:limit] if limit else rows, where)
    if out is not None:
        write_mc_jsonl(records, out)
    return records
