"""A document as it flows through the web-data pipeline, and its JSONL form.

Readers make documents, stages read and rewrite `text` (the WARC reader fills `html` instead; the
`extract` stage turns it into text), writers store the survivors one JSON object per line with their
provenance: the source file, the WARC record id and the URL.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# JSONL keys the pipeline owns; any other key of an input record is carried through unchanged in `extra`.
KNOWN_KEYS = ("id", "text", "url", "source", "record_id", "meta")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(slots=True)
class Document:
    id: str  # stable within a run: the WARC record id, the input's "id", or "<file>:<n>"
    text: str = ""  # the text stages work on ("" until `extract` for WARC responses)
    html: bytes | None = None  # raw HTTP payload of a WARC response, dropped by `extract`
    url: str | None = None  # WARC-Target-URI or the input's "url"
    source: str = ""  # the file the document was read from (first reader in the run)
    record_id: str | None = None  # WARC-Record-ID, for going back to the archive
    meta: dict[str, Any] = field(default_factory=dict)  # what stages learned: language, scores, masked counts
    extra: dict[str, Any] = field(default_factory=dict)  # other fields of a JSONL input, written back as they were

    def nbytes(self) -> int:
        """Size of what the next stage sees: the HTML payload before extraction, else the UTF-8 text."""
        if self.html is not None:
            return len(self.html)
        return len(self.text.encode("utf-8", "surrogatepass"))

    def to_json(self) -> str:
        rec: dict[str, Any] = dict(self.extra)
        rec.update(id=self.id, text=self.text, url=self.url, source=self.source, record_id=self.record_id)
        if self.meta:
            rec["meta"] = self.meta
        return json.dumps(rec, ensure_ascii=False)

    @classmethod
    def from_record(cls, rec: dict[str, Any], text_field: str, default_id: str, source: str) -> Document:
        """From one parsed JSONL object; raises KeyError/TypeError when the text field is missing or not a string."""
        text = rec[text_field]
        if not isinstance(text, str):
            raise TypeError(f"field {text_field!r} is {type(text).__name__}, not a string")
        text = valid_unicode(text)
        extra = {k: v for k, v in rec.items() if k not in KNOWN_KEYS and k != text_field}
        meta = rec.get("meta")
        return cls(
            id=str(rec.get("id") or default_id),
            text=text,
            url=rec.get("url"),
            source=rec.get("source") or source,
            record_id=rec.get("record_id"),
            meta=dict(meta) if isinstance(meta, dict) else {},
            extra=extra,
        )

    def snippet(self, n: int = 300) -> str:
        if self.html is not None:
            return self.html[:n].decode("utf-8", "replace")
        return self.text[:n]


def valid_unicode(text: str) -> str:
    """`text` with lone surrogates (JSON "\\ud83d" of a cut emoji) as U+FFFD, so that it can be written as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
