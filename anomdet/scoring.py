"""Score records with a model; keep the scores and the flags they earn."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anomdet.inference import Progress, predict_scores
from db import repository as repo
from db.engine import session_scope
from db.records import IdRange, RecordsMapping, iter_unlabelled, reflect_records_table
from db.repository import ScoreRow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scorer:
    """A model with what scoring needs: its tokenizer, threshold and max length."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    threshold: float
    max_length: int
    # Texts per batch; None: the device's figure (see anomdet.device.batch_budget).
    batch_size: int | None = None


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

    def as_dict(self) -> dict[str, Any]:
        return {"scored": self.scored, "flagged": self.flagged, "skipped": self.skipped,
                "skipped_example_ids": [str(i) for i in self.skipped_ids[:20]],
                "unkeyed": self.unkeyed, "unkeyed_example_ids": self.unkeyed_ids[:20]}


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
        found = predict_scores(scorer.model, scorer.tokenizer, texts,
                               batch_size=scorer.batch_size, max_length=scorer.max_length)
        for position, value in zip(ok.nonzero()[0], found.tolist(), strict=True):
            scores[position] = value
        summary.scored += len(texts)
        summary.flagged += int((found >= scorer.threshold).sum())
    summary.skipped_ids.extend(k for k, good in zip(keys, ok, strict=True) if not good)
    return [ScoreRow(*row) for row in zip(keys, scores, hashes, strict=True)]


def score_id_range(
    scorer: Scorer, engine: Engine, mapping: RecordsMapping, *, version_id: int,
    id_range: IdRange | None, chunk_size: int, progress: Progress | None = None,
    expected: int = 0, run_id: int | None = None,
) -> ScoreSummary:
    """Score the unlabelled records of one id range that `version_id` has not scored for
    their current text, and keep their scores and flags.

    The range is read in chunks of `chunk_size`; each chunk's scores and flags commit in
    their own transaction, so a pass that stops part-way resumes where it stopped.
    `progress` is told (records done, at least `expected`) after each chunk. `run_id`
    is the retraining run whose promotion the scores are for, if any.
    """
    summary = ScoreSummary()
    with engine.connect() as conn:
        table = reflect_records_table(conn, mapping)
        for chunk in iter_unlabelled(conn, table, mapping, chunk_size=chunk_size,
                                     id_range=id_range, version_id=version_id):
            rows = score_rows(scorer, chunk, summary)
            with session_scope(engine) as session:
                summary.flags_written += repo.write_scores(
                    session=session, model_version_id=version_id, rows=rows,
                    threshold=scorer.threshold, run_id=run_id)
            if progress:
                done = summary.scored + summary.skipped
                progress(done, max(done, expected))
    return summary
