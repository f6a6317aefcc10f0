"""Score records with a model, chunk by chunk, and count what the scores earn.

Where the records come from and where their scores are kept is the caller's: this module
is handed the chunks and a function that keeps each chunk's rows, and never reaches a
database itself."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from anomdet.outcome import EXAMPLE_IDS, ScoreCounts
from db.models import ScoreRow

if TYPE_CHECKING:
    # torch and transformers load when a model scores, not when a flow that may end
    # before scoring (nothing new, no champion, a host that never answers) is imported.
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from anomdet.inference import Progress
    from anomdet.lexical import LexicalEvidence

logger = logging.getLogger(__name__)

#: Keeps one chunk's score rows and the flags they earn; returns the flags written.
KeepScores = Callable[[Sequence[ScoreRow]], int]


@dataclass(frozen=True)
class Scorer:
    """A model with what scoring needs: its tokenizer, threshold, max length and the
    n-gram evidence its scores blend in."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    threshold: float
    max_length: int
    # Texts per batch; None: the device's figure (see anomdet.device.batch_budget).
    batch_size: int | None = None
    # None: a model that scores with its encoder alone.
    lexical: LexicalEvidence | None = None

    def scores(self, texts: list[str]) -> np.ndarray:
        """The model's probability that each text is anomalous, in input order."""
        from anomdet.inference import predict_scores

        return predict_scores(self.model, self.tokenizer, texts, batch_size=self.batch_size,
                              max_length=self.max_length, lexical=self.lexical)


@dataclass
class ScoreSummary:
    """What a scoring pass did, accumulated over chunks.

    `unkeyed` counts records that could not be scored because their id is NULL or
    shared with another record; records = scored + skipped + unkeyed. `flags_written`
    counts the flag rows a pass stored (inserted, or updated for a changed text).
    """

    scored: int = 0
    flagged: int = 0
    flags_written: int = 0
    skipped_ids: list[Any] = field(default_factory=list)
    unkeyed: int = 0
    unkeyed_ids: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.skipped_ids)

    def counts(self) -> ScoreCounts:
        """What the pass did, as the scoring flow adds it up over id ranges."""
        return ScoreCounts(
            scored=self.scored, flagged=self.flagged, skipped=self.skipped,
            skipped_example_ids=tuple(str(i) for i in self.skipped_ids[:EXAMPLE_IDS]),
            unkeyed=self.unkeyed, unkeyed_example_ids=tuple(self.unkeyed_ids[:EXAMPLE_IDS]))

    def as_dict(self) -> dict[str, Any]:
        return self.counts().to_dict()


def scorable(frame: pd.DataFrame) -> pd.Series:
    """True where a record has text that can be scored (a non-blank string)."""
    return frame["text"].map(lambda t: isinstance(t, str) and bool(t.strip()))


def _keys(frame: pd.DataFrame) -> list[str]:
    # "key" is the id as the database writes it as text; a frame without it (read by
    # other means) falls back to Python's spelling of the id.
    column = frame["key"] if "key" in frame.columns else frame["id"]
    return [str(k) for k in column.tolist()]


def score_rows(scorer: Scorer, frame: pd.DataFrame, summary: ScoreSummary) -> list[ScoreRow]:
    """Score one chunk of records: one row per record, the score None where there is no
    usable text (those are counted in `summary` as skipped, never flagged)."""
    if frame.empty:
        return []
    ok = scorable(frame).to_numpy()
    keys = _keys(frame)
    hashes = (frame["text_hash"].tolist() if "text_hash" in frame.columns
              else [None] * len(frame))
    scores: list[float | None] = [None] * len(frame)
    if ok.any():
        texts = frame["text"][ok].tolist()
        found = scorer.scores(texts)
        for position, value in zip(ok.nonzero()[0], found.tolist(), strict=True):
            scores[position] = value
        summary.scored += len(texts)
        summary.flagged += int((found >= scorer.threshold).sum())
    summary.skipped_ids.extend(k for k, good in zip(keys, ok, strict=True) if not good)
    return [ScoreRow(*row) for row in zip(keys, scores, hashes, strict=True)]


def score_chunks(scorer: Scorer, chunks: Iterable[pd.DataFrame], keep: KeepScores, *,
                 progress: Progress | None = None, expected: int = 0) -> ScoreSummary:
    """Score `chunks` of records one after another, handing each chunk's rows to `keep`
    before the next chunk is read.

    The records come from the caller, and go back to it through `keep`: where they are
    read from and how they are stored (each chunk in its own transaction, so that a
    pass that stops part-way resumes where it stopped) is the caller's. `progress` is
    told (records done, at least `expected`) after each chunk is kept.
    """
    summary = ScoreSummary()
    for chunk in chunks:
        summary.flags_written += keep(score_rows(scorer, chunk, summary))
        if progress:
            done = summary.scored + summary.skipped
            progress(done, max(done, expected))
    return summary
