"""Per-stage counters for the run report: documents and bytes in and out, why documents were dropped.

One `StageStats` per stage per shard, filled in a worker, returned as a plain dict (picklable for
process pools and Ray) and merged on the driver in shard order, so the report is the same whatever
the number of workers and the order shards finish in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SNIPPET_CHARS = 300  # characters of a dropped document kept as an example


@dataclass
class StageStats:
    name: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0  # time spent inside the stage (not reading or writing)
    drops: dict[str, int] = field(default_factory=dict)  # reason -> documents dropped
    counters: dict[str, int] = field(default_factory=dict)  # other events: masked emails, corrupt gzip members
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # reason -> first few dropped
    max_examples: int = 3

    def count(self, key: str, n: int = 1) -> None:
        if n:
            self.counters[key] = self.counters.get(key, 0) + n

    def drop(self, reason: str, doc: Any = None, detail: str | None = None, where: str | None = None) -> None:
        """Count one dropped document (or record) under `reason`; keep it as an example while there is room."""
        self.drops[reason] = self.drops.get(reason, 0) + 1
        self.example(reason, doc, detail, where)

    def example(self, reason: str, doc: Any = None, detail: str | None = None, where: str | None = None) -> None:
        ex = self.examples.setdefault(reason, [])
        if len(ex) >= self.max_examples:
            return
        item: dict[str, Any] = {}
        if doc is not None:
            item.update(id=doc.id, url=doc.url, source=doc.source, text=doc.snippet(SNIPPET_CHARS))
        if where is not None:
            item["where"] = where
        if detail is not None:
            item["detail"] = detail
        ex.append(item)

    def merge(self, other: StageStats) -> None:
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.seconds += other.seconds
        for k, v in other.drops.items():
            self.drops[k] = self.drops.get(k, 0) + v
        for k, v in other.counters.items():
            self.counters[k] = self.counters.get(k, 0) + v
        for k, items in other.examples.items():
            mine = self.examples.setdefault(k, [])
            mine.extend(items[: max(0, self.max_examples - len(mine))])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "seconds": round(self.seconds, 6),
            "drops": dict(sorted(self.drops.items(), key=lambda kv: -kv[1])),
            "counters": dict(sorted(self.counters.items())),
            "examples": self.examples,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], max_examples: int = 3) -> StageStats:
        return cls(
            name=d["name"],
            docs_in=d["docs_in"],
            docs_out=d["docs_out"],
            bytes_in=d["bytes_in"],
            bytes_out=d["bytes_out"],
            seconds=d.get("seconds", 0.0),
            drops=dict(d.get("drops", {})),
            counters=dict(d.get("counters", {})),
            examples={k: list(v) for k, v in d.get("examples", {}).items()},
            max_examples=max_examples,
        )


def merge_stats(lists: list[list[dict[str, Any]]], max_examples: int = 3) -> list[StageStats]:
    """Merge the per-shard stats lists (same stages, same order) into one list."""
    out: list[StageStats] = []
    for stats in lists:
        for i, d in enumerate(stats):
            s = StageStats.from_dict(d, max_examples)
            if i == len(out):
                out.append(StageStats(s.name, max_examples=max_examples))
            out[i].merge(s)
    return out
