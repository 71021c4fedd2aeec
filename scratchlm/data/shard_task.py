"""The work a worker does on one shard: read, apply the stages, write the survivors (and their stats).

Both functions take one plain dict and return one, so a process pool or Ray can run them; everything
they need (models, tokenizer) is loaded once per worker process.
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path
from typing import Any

from scratchlm.data.document import Document
from scratchlm.data.readers import ReadOptions, read_documents
from scratchlm.data.stages import GLOBAL_STAGES, build_local
from scratchlm.data.stats import StageStats
from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_write, write_json

JSONL_OPTIONS = ReadOptions(format="jsonl")  # how later phases read the shards earlier phases wrote
BATCH = 64  # documents a stage sees at once (only stages with a `batch` method make use of it)
JUDGE_AFTER = 1000  # documents a stage must have seen before its error rate can stop a shard midway


class TooManyErrors(ScratchLMError):
    """A stage raised on more than `max_error_fraction` of a shard's documents: a broken stage (a model that
    fails on every input), not a few bad documents. The runner stops the run with this message."""


def check_error_rate(name: str, st: StageStats, max_fraction: float, shard: str) -> None:
    errors = st.drops.get(f"{name}_error", 0)
    if errors and errors > max_fraction * st.docs_in:
        first = (st.examples.get(f"{name}_error") or [{}])[0].get("detail", "?")
        raise TooManyErrors(
            f"stage {name!r} failed on {errors} of {st.docs_in} documents of shard {shard} (more than "
            f"max_error_fraction = {max_fraction}); first error: {first}"
        )


def run_shard_task(task: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    k = task["examples"]
    read_stats = StageStats("read", max_examples=k)
    chain: list[tuple[str, Any, StageStats]] = []
    if task["global"] is not None:
        name = task["global"]["stage"]
        chain.append((name, GLOBAL_STAGES[name].apply(task["global"]), StageStats(name, max_examples=k)))
    for name, cfg in task["local"]:
        chain.append((name, build_local(name, cfg), StageStats(name, max_examples=k)))
    raise_errors = task["on_error"] == "raise"
    max_errors = task.get("max_error_fraction", 1.0)
    written = 0
    with atomic_write(task["output"], "w", encoding="utf-8") as out:  # an error below leaves no output file
        for batch in _batches(read_documents(task["input"], read_stats, task["read"]), BATCH):
            for name, stage, st in chain:
                if not batch:
                    break
                batch = _apply(name, stage, st, batch, raise_errors)
                if st.docs_in >= JUDGE_AFTER:
                    check_error_rate(name, st, max_errors, task["shard"])
            for doc in batch:
                out.write(doc.to_json())
                out.write("\n")
            written += len(batch)
        for name, _, st in chain:
            check_error_rate(name, st, max_errors, task["shard"])
    stats = ([read_stats] if task["record_read"] else []) + [st for _, _, st in chain]
    result = {
        "shard": task["shard"],
        "input": task["input"],
        "fingerprint": task["fingerprint"],
        "docs_written": written,
        "seconds": round(time.perf_counter() - t0, 3),
        "stats": [s.to_dict() for s in stats],
    }
    write_json(Path(task["output"]).with_suffix(".stats.json"), result)  # last: it marks the shard done
    return result


def _batches(docs, size: int):
    batch = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _apply(name: str, stage, st: StageStats, docs: list[Document], raise_errors: bool) -> list[Document]:
    """Run one stage on a batch (in order); returns the documents it keeps, with stats updated."""
    before = [(doc.text, doc.html, doc.nbytes()) for doc in docs]
    st.docs_in += len(docs)
    st.bytes_in += sum(b for _, _, b in before)
    t = time.perf_counter()
    results = None
    if hasattr(stage, "batch"):
        try:
            results = stage.batch(docs, st)
        except Exception:
            if raise_errors:
                raise
            # fall back to one document at a time to find (and count) the one that fails
    if results is None:
        results = [_call(name, stage, doc, st, raise_errors) for doc in docs]
    st.seconds += time.perf_counter() - t
    kept = []
    for doc, result, (text, html, nbytes) in zip(docs, results, before):
        if result is not None:
            reason, detail = result if isinstance(result, tuple) else (result, None)
            st.drop(reason, doc, detail)
            continue
        st.docs_out += 1
        st.bytes_out += nbytes if (doc.text is text and doc.html is html) else doc.nbytes()
        kept.append(doc)
    return kept


def _call(name: str, stage, doc: Document, st: StageStats, raise_errors: bool):
    try:
        return stage(doc, st)
    except Exception as e:
        if raise_errors:
            raise
        return (f"{name}_error", f"{type(e).__name__}: {e}")


@cache
def _tokenizer(path: str):
    from scratchlm.tokenizer import load_tokenizer

    return load_tokenizer(Path(path))


def tokenize_shard_task(task: dict[str, Any]) -> dict[str, Any]:
    """Encode one final shard into a token file; documents end with the tokenizer's separator token."""
    import os
    import tempfile

    from scratchlm.tokenizer.encode_corpus import encode_file

    tok = _tokenizer(task["tokenizer"])
    sep = tok.end_of_text
    out = Path(task["output"])
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".txt", dir=out.parent)
    docs = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for doc in read_documents(task["input"], StageStats("read"), JSONL_OPTIONS):
                f.write(doc.text.replace(sep, ""))  # a literal separator inside a text would split the document
                f.write(sep)
                docs += 1
        tokens = 0
        if docs:
            meta = encode_file(tok, tmp, out, num_workers=1, overwrite=True, tokenizer_source=task["tokenizer"])
            tokens = meta["count"]
        else:
            out.unlink(missing_ok=True)
    finally:
        os.unlink(tmp)
    result = {"output": str(out), "documents": docs, "tokens": tokens, "fingerprint": task["fingerprint"]}
    write_json(out.with_suffix(".task.json"), result)
    return result
