"""Pipeline stages: a typed config and a small object around each stage function.

A local stage is called on one document at a time, `stage(doc, stats) -> None | reason | (reason, detail)`:
None keeps the document (possibly rewritten), a reason drops it. A stage whose library has a large
per-call cost may also define `batch(docs, stats) -> [result, ...]`; the runner then hands it batches.
Global stages (dedup) need the whole corpus and run as map -> reduce -> apply (see `dedup.py` and
`runner.py`); each is one `GLOBAL_STAGES` entry: its config, its plan (map + reduce) and its apply step.
Stages are built from the `[[stages]]` tables of a pipeline file:

    [[stages]]
    stage = "language"
    languages = ["en"]
    min_score = 0.65
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scratchlm.config import from_dict, to_dict, validate
from scratchlm.data.document import Document
from scratchlm.data.quality_rules import C4Rules, GopherRules, RepetitionRules
from scratchlm.data.stats import StageStats
from scratchlm.errors import ScratchLMError

Result = None | str | tuple[str, str]


# ---------------------------------------------------------------------------------------------- configs


def _fraction(name: str, value: float) -> None:
    """A probability threshold outside [0, 1] keeps everything or nothing: refused before any work."""
    if not 0 <= value <= 1:
        raise ScratchLMError(f"{name} must be a probability in [0, 1], got {value}")


@dataclass
class ExtractConfig:
    main_content: bool = False  # Resiliparse main-content heuristics: drop navigation, headers, footers
    preserve_formatting: bool = True  # keep block structure as newlines (the line filters need lines)


@dataclass
class LanguageConfig:
    languages: list[str] = field(default_factory=lambda: ["en"])  # keep these ISO codes ([] = keep all, annotate)
    min_score: float = 0.5  # and only with at least this probability
    model: str = ""  # a fastText language-id model path ("" = the bundled lid.176.ftz)

    def validate(self) -> None:
        _fraction("min_score", self.min_score)


@dataclass
class PiiConfig:
    emails: bool = True  # -> |||EMAIL_ADDRESS|||
    phone_numbers: bool = True  # US formats -> |||PHONE_NUMBER|||
    ips: bool = True  # IPv4 -> |||IP_ADDRESS|||


@dataclass
class HarmfulConfig:
    threshold: float = 0.5  # drop when P(harmful) >= threshold
    model: str = ""  # a fastText classifier path ("" = the bundled default, see harmful.py for its limits)
    positive_label: str = ""  # the harmful label of a fastText model ("" = nsfw / toxic)

    def validate(self) -> None:
        _fraction("threshold", self.threshold)


@dataclass
class QualityConfig:
    # a `scratchlm data quality train` directory or a fastText .bin; "" = $SCRATCHLM_QUALITY_MODEL, else the toy
    # default built at first use (data/default_quality.py: Python's docs vs synthetic boilerplate)
    model: str = ""
    threshold: float = 0.5  # keep when P(positive_label) >= threshold
    positive_label: str = "hq"

    def validate(self) -> None:
        _fraction("threshold", self.threshold)


@dataclass
class LengthConfig:
    min_chars: int = 0  # drop shorter documents
    max_chars: int = 0  # drop longer documents (0 = no limit)

    def validate(self) -> None:
        if self.min_chars < 0 or self.max_chars < 0:
            raise ScratchLMError(f"min_chars and max_chars must be >= 0, got {self.min_chars}, {self.max_chars}")
        if self.max_chars and self.min_chars > self.max_chars:
            raise ScratchLMError(
                f"min_chars {self.min_chars} exceeds max_chars {self.max_chars}: every document dropped"
            )


@dataclass
class ExactDedupConfig:
    normalize: bool = False  # compare normalised text (case, accents, punctuation, whitespace) instead of exact


@dataclass
class LineDedupConfig:
    keep_blank_lines: bool = True  # blank lines are never "duplicates" (paragraph breaks survive)
    drop_empty: bool = True  # drop documents left without text


@dataclass
class MinhashDedupConfig:
    num_hashes: int = 128  # signature length
    num_bands: int = 16  # LSH bands (must divide num_hashes); threshold ~ (1/bands)**(bands/hashes) = 0.71
    ngrams: int = 5  # word n-grams of the normalised text
    jaccard_threshold: float = 0.8  # verified true Jaccard needed to call two documents near-duplicates
    seed: int = 0

    def validate(self) -> None:
        from scratchlm.data.dedup import check_minhash
        from scratchlm.data.minhash import check_lsh

        check_lsh(self.num_hashes, self.num_bands)
        check_minhash(self.ngrams, self.jaccard_threshold)


# ---------------------------------------------------------------------------------------------- local stages


class Extract:
    def __init__(self, cfg: ExtractConfig):
        self.cfg = cfg

    def __call__(self, doc: Document, stats: StageStats) -> Result:
        if doc.html is None:
            return None  # already text (WET, JSONL)
        from scratchlm.data.extract import extract_text

        doc.text = extract_text(doc.html, self.cfg.main_content, self.cfg.preserve_formatting)
        doc.html = None
        return None if doc.text else "no_text"


class Language:
    def __init__(self, cfg: LanguageConfig):
        from scratchlm.data.fasttext_models import bundled_lid176, load_fasttext

        self.cfg = cfg
        self.keep = set(cfg.languages)
        self.model = load_fasttext(cfg.model or bundled_lid176())  # at build time: a bad path fails before shard 1

    def __call__(self, doc: Document, stats: StageStats) -> Result:
        from scratchlm.data.fasttext_models import predict_fasttext

        lang, score = predict_fasttext(self.model, doc.text) if doc.text.strip() else ("", 0.0)
        doc.meta["language"], doc.meta["language_score"] = lang, round(score, 4)
        if self.keep and lang not in self.keep:
            return "language_other", f"{lang} ({score:.2f})"
        if score < self.cfg.min_score:
            return "language_low_score", f"{lang} ({score:.2f})"
        return None


class Pii:
    def __init__(self, cfg: PiiConfig):
        from scratchlm.data import pii

        # IPs before phone numbers: a dotted quad must not be read as digits of a phone number.
        self.maskers = [
            (name, fn)
            for name, fn, on in (
                ("emails_masked", pii.mask_emails, cfg.emails),
                ("ips_masked", pii.mask_ips, cfg.ips),
                ("phone_numbers_masked", pii.mask_phone_numbers, cfg.phone_numbers),
            )
            if on
        ]

    def __call__(self, doc: Document, stats: StageStats) -> Result:
        for name, fn in self.maskers:
            text, n = fn(doc.text)
            if n:
                doc.text = text
                stats.count(name, n)
                stats.count("documents_with_" + name.removesuffix("_masked"))
        return None


class Harmful:
    def __init__(self, cfg: HarmfulConfig, kind: str):
        from scratchlm.data import harmful

        self.cfg, self.kind = cfg, kind
        self.positive = cfg.positive_label or kind
        # Load the model now (a wrong path or a file of another kind fails at build time, before shard 1).
        if cfg.model:
            from scratchlm.data.fasttext_models import load_fasttext

            load_fasttext(cfg.model)
        elif kind == "nsfw":
            harmful.ldnoobw_model()
        else:
            harmful._profanity_check()

    def __call__(self, doc: Document, stats: StageStats) -> Result:
        from scratchlm.data.harmful import classify_nsfw, classify_toxic_speech, positive_probability

        fn = classify_nsfw if self.kind == "nsfw" else classify_toxic_speech
        label, score = fn(doc.text, self.cfg.model or None)
        return self._decide(doc, positive_probability(label, score, self.positive))

    def _decide(self, doc: Document, p: float) -> Result:
        doc.meta[self.kind] = round(p, 4)
        return (self.kind, f"P={p:.3f}") if p >= self.cfg.threshold else None

    def batch(self, docs: list[Document], stats: StageStats) -> list[Result]:
        """The default toxic model scores a whole batch in one scikit-learn call; others go one by one."""
        if self.kind != "toxic" or self.cfg.model:
            return [self(d, stats) for d in docs]
        from scratchlm.data.harmful import toxic_probabilities

        return [self._decide(d, p) for d, p in zip(docs, toxic_probabilities([d.text for d in docs]))]


class Gopher:
    def __init__(self, cfg: GopherRules):
        self.cfg = cfg

    def __call__(self, doc: Document, stats: StageStats) -> Result:
        from scratchlm.data.quality_rules import gopher_quality_failures

        failed = gopher_quality_failures(doc.text, self.cfg)
        return (failed[0], ", ".join(failed)) if failed else None


class C4:
    def __init__(self, cfg: C4Rules):
        self.cfg = cfg

    def __call__(self, doc: Document, stats: StageStats) -> Result:
        from scratchlm.data.quality_rules import c4_line_filter

        before = doc.text.count("\n") + 1
        text, reason = c4_line_filter(doc.text, self.cfg)
        if reason:
            return reason
        stats.count("lines_removed", max(0, before - (text.count("\n") + 1)))
        doc.text = text
        return None


class Repetition:
    def __init__(self, cfg: RepetitionRules):
        self.cfg = cfg

    def __call__(self, doc: Document, stats: StageStats) -> Result:
        from scratchlm.data.quality_rules import repetition_failures

        failed = repetition_failures(doc.text, self.cfg)
        return (failed[0], ", ".join(failed)) if failed else None


class Quality:
    def __init__(self, cfg: QualityConfig):
        from scratchlm.data.quality_model import _load_any, default_model_path

        self.cfg = cfg
        self.model = cfg.model or default_model_path()  # fail at build time, not on the first document
        labels = getattr(_load_any(self.model), "labels", None)  # a fastText model does not list its labels
        if labels is not None and cfg.positive_label not in labels:
            raise ScratchLMError(
                f"positive_label {cfg.positive_label!r} is not a label of the quality model {self.model} "
                f"(its labels: {', '.join(labels)})"
            )

    def __call__(self, doc: Document, stats: StageStats) -> Result:
        from scratchlm.data.harmful import positive_probability
        from scratchlm.data.quality_model import classify_quality

        label, score = classify_quality(doc.text, self.model)
        p = positive_probability(label, score, self.cfg.positive_label)
        doc.meta["quality"] = round(p, 4)
        return ("low_quality", f"P({self.cfg.positive_label})={p:.3f}") if p < self.cfg.threshold else None


class Length:
    def __init__(self, cfg: LengthConfig):
        self.cfg = cfg

    def __call__(self, doc: Document, stats: StageStats) -> Result:
        n = len(doc.text)
        if n < self.cfg.min_chars:
            return "too_short", f"{n} chars"
        if self.cfg.max_chars and n > self.cfg.max_chars:
            return "too_long", f"{n} chars"
        return None


# ---------------------------------------------------------------------------------------------- global stages
# plan(config, inputs, run_map) runs on the driver: inputs holds each shard's (path, ReadOptions), run_map
# maps a task over the workers (dedup.py). apply(task) runs in a shard's worker, task = {"stage", "config",
# "drops": {document index in the shard: detail}, "duplicated_lines": path of an .npy file or None}.


def _plan_exact(cfg: ExactDedupConfig, inputs: list, run_map: Callable):
    from scratchlm.data.dedup import plan_exact

    return plan_exact(inputs, run_map, cfg.normalize)


def _plan_lines(cfg: LineDedupConfig, inputs: list, run_map: Callable):
    from scratchlm.data.dedup import plan_lines

    return plan_lines(inputs, run_map, cfg.keep_blank_lines)


def _plan_minhash(cfg: MinhashDedupConfig, inputs: list, run_map: Callable):
    from scratchlm.data.dedup import plan_minhash

    return plan_minhash(inputs, run_map, cfg.num_hashes, cfg.num_bands, cfg.ngrams, cfg.jaccard_threshold, cfg.seed)


class DropPlanned:
    """Drop the documents the plan names, with `reason`; documents arrive in shard order, their position is the key."""

    def __init__(self, task: dict[str, Any], reason: str):
        self.drops: dict[int, str] = task["drops"]
        self.reason = reason
        self.index = -1

    def __call__(self, doc: Document, stats: StageStats) -> Result:
        self.index += 1
        detail = self.drops.get(self.index)
        return (self.reason, detail) if detail is not None else None


class RemoveLines:
    """Remove the lines the plan found duplicated; drop a document left empty if the config says so."""

    def __init__(self, task: dict[str, Any]):
        import numpy as np

        self.dup = np.load(task["duplicated_lines"], mmap_mode="r")
        self.cfg: LineDedupConfig = task["config"]

    def __call__(self, doc: Document, stats: StageStats) -> Result:
        from scratchlm.data.dedup import remove_lines

        text, removed = remove_lines(doc.text, self.dup, self.cfg.keep_blank_lines)
        if removed:
            stats.count("lines_removed", removed)
            doc.text = text
        if self.cfg.drop_empty and not text.strip():
            return "empty_after_line_dedup", f"{removed} lines removed"
        return None


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class StageSpec:
    """A local stage: its settings and how to build the per-document callable."""

    config: type  # the settings dataclass
    build: Callable[[Any], Callable]  # config -> stage callable (see the module docstring)
    about: str


@dataclass(frozen=True)
class GlobalStageSpec:
    """A global stage: map -> reduce on the driver (`plan`), then apply in each shard's worker (`apply`)."""

    config: type  # the settings dataclass
    plan: Callable[[Any, list, Callable], Any]  # (config, inputs, run_map) -> dedup.DedupPlan (see dedup.py)
    apply: Callable[[dict], Callable]  # the shard task's "global" dict -> stage callable for its documents
    about: str


LOCAL_STAGES: dict[str, StageSpec] = {
    "extract": StageSpec(ExtractConfig, Extract, "HTML -> text (Resiliparse); WARC inputs need it first"),
    "language": StageSpec(LanguageConfig, Language, "fastText lid.176 language id: keep languages, min score"),
    "pii": StageSpec(PiiConfig, Pii, "mask emails, US phone numbers, IPv4 addresses"),
    "nsfw": StageSpec(HarmfulConfig, lambda c: Harmful(c, "nsfw"), "drop NSFW documents"),
    "toxic": StageSpec(HarmfulConfig, lambda c: Harmful(c, "toxic"), "drop toxic speech"),
    "gopher": StageSpec(GopherRules, Gopher, "Gopher quality rules (length, word length, ellipses, alphabetic words)"),
    "c4": StageSpec(C4Rules, C4, "C4 line filters (terminal punctuation, short lines, boilerplate)"),
    "repetition": StageSpec(RepetitionRules, Repetition, "Gopher repetition filters (lines, paragraphs, n-grams)"),
    "quality": StageSpec(QualityConfig, Quality, "trained quality classifier"),
    "length": StageSpec(LengthConfig, Length, "character length bounds"),
}
GLOBAL_STAGES: dict[str, GlobalStageSpec] = {
    "exact_dedup": GlobalStageSpec(
        ExactDedupConfig,
        _plan_exact,
        lambda t: DropPlanned(t, "duplicate"),
        "keep the first copy of each identical document",
    ),
    "line_dedup": GlobalStageSpec(
        LineDedupConfig, _plan_lines, RemoveLines, "remove lines that occur more than once in the corpus"
    ),
    "minhash_dedup": GlobalStageSpec(
        MinhashDedupConfig,
        _plan_minhash,
        lambda t: DropPlanned(t, "near_duplicate"),
        "MinHash + LSH near-duplicate removal",
    ),
}


def stage_names() -> list[str]:
    return sorted(LOCAL_STAGES) + sorted(GLOBAL_STAGES)


def parse_stage(table: dict[str, Any], where: str) -> tuple[str, Any]:
    """(stage name, checked config) from one `[[stages]]` table; errors name the table and the key."""
    from scratchlm.config import _nearest

    table = dict(table)
    name = table.pop("stage", None)
    if not isinstance(name, str):
        raise ScratchLMError(
            f'{where}: every [[stages]] table needs stage = "<name>" (one of {", ".join(stage_names())})'
        )
    spec = LOCAL_STAGES.get(name) or GLOBAL_STAGES.get(name)
    if spec is None:
        raise ScratchLMError(
            f"{where}: unknown stage {name!r}{_nearest(name, stage_names())}; known: {', '.join(stage_names())}"
        )
    try:
        cfg = from_dict(spec.config, table)
        validate(cfg)
    except ScratchLMError as e:
        raise ScratchLMError(f"{where} ({name}): {e}") from None
    return name, cfg


def is_global(name: str) -> bool:
    return name in GLOBAL_STAGES


_built: dict[str, Callable] = {}


def check_local_stages(stages: list[tuple[str, Any]]) -> None:
    """Build every local stage once on the driver before the first shard: a model that cannot be loaded (a
    wrong path, a file of another kind) is one error naming the stage, not every document dropped as
    `<stage>_error`. Forked workers inherit the built stages."""
    for name, cfg in stages:
        try:
            build_local(name, cfg)
        except ScratchLMError as e:
            raise ScratchLMError(f"stage {name!r}: {e}") from None
        except Exception as e:  # a library's own error on a damaged model file
            raise ScratchLMError(f"stage {name!r} could not be built: {type(e).__name__}: {e}") from None


def build_local(name: str, cfg: Any) -> Callable:
    """The stage object for `name`, built once per process per config (models load once)."""
    key = name + json.dumps(to_dict(cfg), sort_keys=True)
    if key not in _built:
        _built[key] = LOCAL_STAGES[name].build(cfg)
    return _built[key]


def config_dict(name: str, cfg: Any) -> dict[str, Any]:
    return {"stage": name, **(to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg))}
