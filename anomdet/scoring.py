"""Score records with a model and turn scores into flag rows."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anomdet.model import Progress, predict_scores

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scorer:
    """A model with what scoring needs: its tokenizer, threshold and max length."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    threshold: float
    max_length: int
    batch_size: int = 64


@dataclass
class ScoreSummary:
    """What a scoring pass did, accumulated over chunks."""

    scored: int = 0
    flagged: int = 0
    skipped_ids: list[Any] = field(default_factory=list)
    last_id: Any = None

    @property
    def skipped(self) -> int:
        return len(self.skipped_ids)

    def as_dict(self) -> dict[str, Any]:
        return {"scored": self.scored, "flagged": self.flagged, "skipped": self.skipped,
                "skipped_example_ids": [str(i) for i in self.skipped_ids[:20]]}


def scorable(frame: pd.DataFrame) -> pd.Series:
    """True where a record has text that can be scored (a non-blank string)."""
    return frame["text"].map(lambda t: isinstance(t, str) and bool(t.strip()))


def score_chunk(
    scorer: Scorer, frame: pd.DataFrame, summary: ScoreSummary, *, run_id: int | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Score one chunk of records; return flag rows for those at or above the threshold.

    Records with no usable text are counted in `summary` and skipped, never flagged.
    """
    if frame.empty:
        return []
    ok = scorable(frame)
    summary.skipped_ids.extend(frame.loc[~ok, "id"].tolist())
    usable = frame[ok]
    summary.last_id = frame["id"].iloc[-1]
    if usable.empty:
        return []
    scores = predict_scores(scorer.model, scorer.tokenizer, usable["text"].tolist(),
                            batch_size=scorer.batch_size, max_length=scorer.max_length,
                            progress=progress)
    hit = scores >= scorer.threshold
    summary.scored += len(usable)
    summary.flagged += int(hit.sum())
    return [
        {"record_id": rid, "score": float(s), "threshold": scorer.threshold, "run_id": run_id}
        for rid, s in zip(usable["id"].to_numpy()[hit], scores[hit], strict=True)
    ]


def score_all(
    scorer: Scorer, chunks: Iterable[pd.DataFrame], *, run_id: int | None = None,
    progress: Progress | None = None, total: int = 0,
) -> tuple[list[dict[str, Any]], ScoreSummary]:
    """Score a stream of chunks; return every flag row and the summary.

    `progress` is told (records done, `total`) after each chunk.
    """
    summary, flags = ScoreSummary(), []
    for chunk in chunks:
        flags.extend(score_chunk(scorer, chunk, summary, run_id=run_id))
        if progress:
            progress(summary.scored + summary.skipped, max(total, summary.scored + summary.skipped))
    if summary.skipped:
        logger.warning("%d records have no text to score and were skipped (e.g. ids %s)",
                       summary.skipped, summary.skipped_ids[:5])
    return flags, summary
