"""Deduplication across a corpus: exact documents, exact lines, near-duplicates (MinHash + LSH).

Each method is map -> reduce -> apply, so it runs across workers: the map step reads one shard and
returns something small (hashes, LSH band keys), the reduce step on the driver decides what goes,
the apply step rewrites each shard. The pipeline's global stages and the file-level functions below
share these steps.

    exact_line_dedup(paths, "out/")                                   # drop every line that occurs twice or more
    minhash_dedup(paths, num_hashes=128, num_bands=16, ngrams=5, jaccard_threshold=0.8, output_dir="out/")
    exact_dedup(paths, "out/")                                        # keep the first copy of identical texts

File-level functions: a `.jsonl[.gz]` file holds one document per line (field "text"); any other file
is one document. Outputs have the input's file name in `output_dir`; a one-document file whose
document is dropped is not written, JSONL files keep their surviving lines (unchanged, or with the
text field rewritten by line dedup).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scratchlm.data.hashing import hash64, hash128, normalize_for_dedup
from scratchlm.data.minhash import (
    EMPTY,
    MinHasher,
    UnionFind,
    band_keys,
    bucket_groups,
    check_lsh,
    jaccard,
    word_ngrams,
)
from scratchlm.data.readers import ReadOptions, open_binary, read_documents
from scratchlm.data.stats import StageStats
from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_write

# ---------------------------------------------------------------------------------------------- map steps
# Each takes one picklable tuple, (path, ReadOptions, settings...), so process pools and Ray can run it.


def _texts(path: str, opts: ReadOptions) -> Iterator[tuple[str, str]]:
    for doc in read_documents(path, StageStats("read"), opts):
        yield doc.id, doc.text


def exact_hashes_task(arg: tuple) -> tuple[np.ndarray, list[str]]:
    """128-bit hash of every document's text (normalised if asked), and the document ids."""
    path, opts, normalize = arg
    ids, hashes = [], []
    for doc_id, text in _texts(path, opts):
        ids.append(doc_id)
        hashes.append(hash128(normalize_for_dedup(text) if normalize else text))
    return np.array(hashes, dtype="S16"), ids


def line_hash(line: str) -> int:
    return hash64(line)


def is_blank(line: str) -> bool:
    return not line.strip()


def line_counts_task(arg: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(distinct line hashes, occurrences of each) in one shard; blank lines are not counted when kept."""
    path, opts, keep_blank = arg
    hs = [
        line_hash(line)
        for _, text in _texts(path, opts)
        for line in text.split("\n")
        if not (keep_blank and is_blank(line))
    ]
    uniq, counts = np.unique(np.array(hs, dtype=np.uint64), return_counts=True)
    return uniq, counts


def minhash_keys_task(arg: tuple) -> tuple[np.ndarray, np.ndarray, int]:
    """(LSH band keys (N, B), mask of documents without words (N,), N) of one shard."""
    path, opts, num_hashes, num_bands, ngrams, seed = arg
    mh = MinHasher(num_hashes, ngrams, seed)
    sigs = [mh.signature(text) for _, text in _texts(path, opts)]
    if not sigs:
        return np.zeros((0, num_bands), np.uint64), np.zeros(0, bool), 0
    sig = np.stack(sigs)  # (N, H)
    return band_keys(sig, num_bands), (sig == EMPTY).all(axis=1), len(sigs)


def fetch_texts_task(arg: tuple) -> dict[int, tuple[str, str]]:
    """{local index: (id, text)} for the wanted documents of one shard."""
    path, opts, wanted = arg
    wanted = set(wanted)
    return {i: (d, t) for i, (d, t) in enumerate(_texts(path, opts)) if i in wanted}


# ---------------------------------------------------------------------------------------------- reduce steps


@dataclass
class DedupPlan:
    """What the apply step needs per shard: dropped local indices -> a detail for the report."""

    drops: list[dict[int, str]]
    duplicated_lines: np.ndarray | None = None  # line dedup: sorted hashes of lines seen more than once
    info: dict[str, Any] = field(default_factory=dict)  # counts for the report (pairs verified, clusters)


def exact_plan(results: list[tuple[np.ndarray, list[str]]]) -> DedupPlan:
    """Keep the first document (in shard order) of every distinct text."""
    hashes = np.concatenate([h for h, _ in results]) if results else np.zeros(0, "S16")
    ids = [i for _, shard_ids in results for i in shard_ids]
    offsets = np.cumsum([0] + [len(h) for h, _ in results])
    drops: list[dict[int, str]] = [{} for _ in results]
    if hashes.size:
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        keeper = first[inverse]  # (N,) global index of the copy that stays
        for pos in np.flatnonzero(keeper != np.arange(hashes.size)).tolist():
            shard = int(np.searchsorted(offsets, pos, side="right") - 1)
            drops[shard][pos - int(offsets[shard])] = f"duplicate of {ids[keeper[pos]]}"
    return DedupPlan(drops, info={"documents": int(hashes.size), "distinct": int(hashes.size - sum(map(len, drops)))})


def line_plan(results: list[tuple[np.ndarray, np.ndarray]]) -> DedupPlan:
    """Hashes of lines that occur more than once across all shards."""
    if results:
        uniq = np.concatenate([u for u, _ in results])
        counts = np.concatenate([c for _, c in results])
    else:
        uniq, counts = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    keys, inverse = np.unique(uniq, return_inverse=True)
    total = np.bincount(inverse, weights=counts, minlength=keys.size)
    dup = keys[total > 1]
    info = {"distinct_lines": int(keys.size), "duplicated_distinct_lines": int(dup.size)}
    return DedupPlan([{} for _ in results], duplicated_lines=dup, info=info)


def minhash_plan(
    results: list[tuple[np.ndarray, np.ndarray, int]],
    fetch: Callable[[dict[int, list[int]]], dict[tuple[int, int], tuple[str, str]]],
    ngrams: int,
    jaccard_threshold: float,
) -> DedupPlan:
    """Verify LSH candidates by true Jaccard of normalised word n-grams; keep one document per connected component.

    `fetch({shard: [local indices]})` returns {(shard, local): (id, text)} for the candidates only. Within
    a bucket, a pair already in one component is not verified again: the components come out the same as
    verifying every candidate pair, with far fewer comparisons when many copies share buckets.
    """
    offsets = np.cumsum([0] + [n for _, _, n in results])
    n_total = int(offsets[-1])
    drops: list[dict[int, str]] = [{} for _ in results]
    info = {"documents": n_total, "candidate_groups": 0, "pairs_verified": 0, "pairs_similar": 0, "clusters": 0}
    if n_total == 0:
        return DedupPlan(drops, info=info)
    num_bands = results[0][0].shape[1]
    keys = np.concatenate([k.reshape(-1, num_bands) for k, _, _ in results])  # (N, B)
    empty = np.concatenate([e for _, e, _ in results])
    groups = list(bucket_groups(keys, skip=empty))
    info["candidate_groups"] = len(groups)
    if not groups:
        return DedupPlan(drops, info=info)

    def split(pos: int) -> tuple[int, int]:
        shard = int(np.searchsorted(offsets, pos, side="right") - 1)
        return shard, pos - int(offsets[shard])

    wanted: dict[int, list[int]] = {}
    for pos in sorted({int(p) for g in groups for p in g}):
        s, i = split(pos)
        wanted.setdefault(s, []).append(i)
    docs = fetch(wanted)
    grams: dict[int, set[str]] = {}

    def ngram_set(pos: int) -> set[str]:
        if pos not in grams:
            grams[pos] = word_ngrams(docs[split(pos)][1], ngrams)
        return grams[pos]

    uf = UnionFind(n_total)
    for g in groups:
        members = g.tolist()
        for a_i, a in enumerate(members):
            for b in members[a_i + 1 :]:
                if uf.find(a) == uf.find(b):
                    continue
                info["pairs_verified"] += 1
                if jaccard(ngram_set(a), ngram_set(b)) >= jaccard_threshold:
                    info["pairs_similar"] += 1
                    uf.union(a, b)
    roots = set()
    for pos in grams:
        root = uf.find(pos)
        if root != pos:
            roots.add(root)
            s, i = split(pos)
            drops[s][i] = f"near-duplicate of {docs[split(root)][0]}"
    info["clusters"] = len(roots)
    return DedupPlan(drops, info=info)


# ---------------------------------------------------------------------------------------------- map + reduce
# `inputs` holds one (path, ReadOptions) per shard. `run_map(fn, args, step=None)` runs a map step over
# workers and returns its results in order: the file-level functions below pass a process pool, the
# pipeline's global stages (`stages.GLOBAL_STAGES`) its executor; `step` names a secondary map ("verify").

Inputs = list[tuple[str, ReadOptions]]


def plan_exact(inputs: Inputs, run_map: Callable, normalize: bool = False) -> DedupPlan:
    return exact_plan(run_map(exact_hashes_task, [(path, opts, normalize) for path, opts in inputs]))


def plan_lines(inputs: Inputs, run_map: Callable, keep_blank_lines: bool = True) -> DedupPlan:
    return line_plan(run_map(line_counts_task, [(path, opts, keep_blank_lines) for path, opts in inputs]))


def plan_minhash(
    inputs: Inputs,
    run_map: Callable,
    num_hashes: int,
    num_bands: int,
    ngrams: int,
    jaccard_threshold: float,
    seed: int = 0,
) -> DedupPlan:
    args = [(path, opts, num_hashes, num_bands, ngrams, seed) for path, opts in inputs]
    results = run_map(minhash_keys_task, args)

    def fetch(wanted: dict[int, list[int]]) -> dict[tuple[int, int], tuple[str, str]]:
        shards = sorted(wanted)
        got = run_map(fetch_texts_task, [(*inputs[s], wanted[s]) for s in shards], "verify")
        return {(s, i): v for s, docs in zip(shards, got) for i, v in docs.items()}

    return minhash_plan(results, fetch, ngrams, jaccard_threshold)


# ---------------------------------------------------------------------------------------------- apply step


def remove_lines(text: str, duplicated: np.ndarray, keep_blank: bool = True) -> tuple[str, int]:
    """`text` without the lines whose hash is in `duplicated` (sorted); returns (text, lines removed)."""
    lines = text.split("\n")
    hs = np.array([line_hash(line) for line in lines], dtype=np.uint64)
    pos = np.searchsorted(duplicated, hs)
    hit = (pos < duplicated.size) & (duplicated[np.minimum(pos, max(duplicated.size - 1, 0))] == hs)
    if keep_blank:
        hit &= ~np.array([is_blank(line) for line in lines], dtype=bool)
    if not hit.any():
        return text, 0
    kept = [line for line, h in zip(lines, hit.tolist()) if not h]
    return "\n".join(kept), int(hit.sum())


# ---------------------------------------------------------------------------------------------- file-level API


def _file_options(path: str | Path) -> ReadOptions:
    name = Path(path).name.lower().removesuffix(".gz")
    return ReadOptions(format="jsonl" if name.endswith((".jsonl", ".ndjson")) else "document")


def _check_outputs(input_paths: list[str | Path], output_dir: str | Path) -> tuple[list[Path], Path]:
    paths = [Path(p) for p in input_paths]
    for p in paths:
        if not p.is_file():
            raise ScratchLMError(f"input file not found: {p}")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ScratchLMError(f"two inputs share the file name {dup!r}: outputs are named after inputs")
    out = Path(output_dir)
    for p in paths:
        if (out / p.name).resolve() == p.resolve():
            raise ScratchLMError(f"output_dir would overwrite the input {p}")
    out.mkdir(parents=True, exist_ok=True)
    return paths, out


def _rewrite(path: Path, out: Path, drops: dict[int, str], new_texts: dict[int, str]) -> dict[str, int]:
    """Write the survivors of one input file (see the module docstring); returns kept/dropped counts."""
    opts = _file_options(path)
    target = out / path.name
    if opts.format == "document":
        if 0 in drops:
            target.unlink(missing_ok=True)
            return {"kept": 0, "dropped": 1}
        text = new_texts.get(0)
        with atomic_write(target, "wb") as f:
            f.write(text.encode("utf-8") if text is not None else path.read_bytes())
        return {"kept": 1, "dropped": 0}
    kept = dropped = 0
    # Documents are numbered as the reader numbers them: non-empty lines that parse and have a text field.
    with open_binary(path, StageStats("read")) as src, atomic_write(target, "wb") as raw:
        dst = gzip.GzipFile(fileobj=raw, mode="wb") if path.name.endswith(".gz") else raw
        idx = 0
        for line in src:
            rec = _json_doc(line, opts.text_field)
            if rec is None:
                dst.write(line)  # not a document to this reader: pass it through
                continue
            i, idx = idx, idx + 1
            if i in drops:
                dropped += 1
                continue
            if i in new_texts:
                rec[opts.text_field] = new_texts[i]
                line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
            dst.write(line)
            kept += 1
        if dst is not raw:
            dst.close()
    return {"kept": kept, "dropped": dropped}


def _json_doc(line: bytes, text_field: str) -> dict | None:
    if not line.strip():
        return None
    try:
        rec = json.loads(line.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str) or not rec[text_field].strip():
        return None
    return rec


def _inputs(paths: list[Path]) -> Inputs:
    return [(str(p), _file_options(p)) for p in paths]


def check_minhash(ngrams: int, jaccard_threshold: float) -> None:
    if ngrams < 1:
        raise ScratchLMError(f"ngrams must be >= 1, got {ngrams}")
    if not 0 < jaccard_threshold <= 1:
        raise ScratchLMError(f"jaccard_threshold must be in (0, 1], got {jaccard_threshold}")


def _pool(workers: int | None) -> Callable:
    """A `run_map` over a local process pool of `workers` (None: one per core)."""
    if workers is not None and workers < 0:
        raise ScratchLMError(f"the number of workers must be >= 0 (0 = one per core), got {workers}")
    return lambda fn, args, step=None: _map(fn, args, workers)


def _map(fn: Callable, args: list, workers: int | None) -> list:
    from scratchlm.data.executors import LocalExecutor, TaskFailure

    results: list = [None] * len(args)
    for i, r in LocalExecutor(workers or 0).map(fn, args):  # 0: one process per core, at most one per arg
        if isinstance(r, TaskFailure):
            raise ScratchLMError(f"dedup failed on {args[i][0]}: {r.error}")
        results[i] = r
    return results


def exact_dedup(input_paths: list[str | Path], output_dir: str | Path, *, workers: int | None = None) -> dict:
    paths, out = _check_outputs(input_paths, output_dir)
    plan = plan_exact(_inputs(paths), _pool(workers))
    files = [_rewrite(p, out, d, {}) for p, d in zip(paths, plan.drops)]
    return {"files": len(files), "kept": sum(f["kept"] for f in files), "dropped": sum(f["dropped"] for f in files)}


def _line_dedup_task(arg: tuple) -> dict[int, str]:
    path, opts, duplicated, keep_blank = arg
    out = {}
    for i, (_, text) in enumerate(_texts(path, opts)):
        new, removed = remove_lines(text, duplicated, keep_blank)
        if removed:
            out[i] = new
    return out


def exact_line_dedup(
    input_paths: list[str | Path], output_dir: str | Path, *, keep_blank_lines: bool = True, workers: int | None = None
) -> dict:
    """Remove, from every document, each line that occurs more than once in the whole corpus.

    Two passes: count line hashes (64-bit BLAKE2b) over all files, then rewrite keeping lines seen once.
    Blank lines are kept (paragraph breaks survive) unless `keep_blank_lines=False`. A document left
    with no text is still written (line dedup removes lines, not documents).
    """
    paths, out = _check_outputs(input_paths, output_dir)
    inputs = _inputs(paths)
    plan = plan_lines(inputs, _pool(workers), keep_blank_lines)
    dup = plan.duplicated_lines
    new_texts = _map(_line_dedup_task, [(path, opts, dup, keep_blank_lines) for path, opts in inputs], workers)
    files = [_rewrite(p, out, {}, t) for p, t in zip(paths, new_texts)]
    return {"files": len(files), "duplicated_distinct_lines": int(dup.size), **plan.info} | {
        "documents_changed": sum(len(t) for t in new_texts),
        "documents": sum(f["kept"] for f in files),
    }


def minhash_dedup(
    input_paths: list[str | Path],
    num_hashes: int,
    num_bands: int,
    ngrams: int,
    jaccard_threshold: float,
    output_dir: str | Path,
    *,
    seed: int = 0,
    workers: int | None = None,
) -> dict:
    """Fuzzy document dedup: MinHash signatures over word n-grams, LSH with `num_bands` bands, candidates
    verified by true Jaccard >= `jaccard_threshold`, one document kept per connected component (the first
    in input order)."""
    check_lsh(num_hashes, num_bands)
    check_minhash(ngrams, jaccard_threshold)
    paths, out = _check_outputs(input_paths, output_dir)
    plan = plan_minhash(_inputs(paths), _pool(workers), num_hashes, num_bands, ngrams, jaccard_threshold, seed)
    files = [_rewrite(p, out, d, {}) for p, d in zip(paths, plan.drops)]
    return {
        "files": len(files),
        "kept": sum(f["kept"] for f in files),
        "dropped": sum(f["dropped"] for f in files),
    } | plan.info
