"""Tasks of the scoring flow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Engine

from anomdet.artifact import load_artifact, recorded_scoring
from anomdet.outcome import ScoreCounts, ScoringOutcome
from anomdet.scoring import Scorer, ScoreSummary, score_chunks
from anomdet.settings import Settings
from db import repository as repo
from db import service
from db.models import ScoreRow
from db.records import IdRange, RecordsMapping, unscored_chunks
from db.service import ScoringWork
from tasks.database import only_transient
from tasks.progress import ui_progress

if TYPE_CHECKING:
    from anomdet.inference import Progress


@dataclass(frozen=True)
class ScoringPlan:
    """What one scoring pass covers: a version (the champion, or a candidate being
    backfilled) and the id ranges holding the records it has not scored for their
    current text."""

    version_id: int
    artifact_uri: str
    weights_sha256: str
    ranges: tuple[tuple[Any, Any], ...]
    records: int
    unkeyed: int = 0
    unkeyed_ids: tuple[str, ...] = ()
    # Threshold, max length and precision as the database records them.
    recorded: tuple[tuple[str, Any], ...] = ()
    version: int | None = None  # the version's number, as users see it
    run_id: int | None = None  # the retraining run whose promotion this backfill is

    @classmethod
    def of(cls, work: ScoringWork, run_id: int | None = None) -> ScoringPlan:
        """The plan for the work the database found left to a version."""
        version = work.version
        return cls(version.id, version.artifact_uri, version.weights_sha256,
                   tuple(work.ranges), work.records, work.unkeyed, tuple(work.unkeyed_ids),
                   tuple(recorded_scoring(version.threshold, version.hyperparameters).items()),
                   version=version.version, run_id=run_id)

    @property
    def range_size(self) -> int:
        """Records per range (the last may hold fewer)."""
        return -(-self.records // max(1, len(self.ranges)))


@task(name="plan scoring", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5],
      retry_condition_fn=only_transient)
def plan_scoring(settings: Settings, chunks: int) -> ScoringPlan | None:
    """The champion and the unlabelled records it has not scored, cut into id ranges;
    None without a champion. First the flags of records whose text changed since they
    were flagged are marked, so that the views hide them until the new texts are scored
    (see `db.service.champion_scoring_work`)."""
    work = service.champion_scoring_work(settings.engine(), settings.model_name,
                                         settings.records.mapping(), chunks)
    return None if work is None else ScoringPlan.of(work)


@task(name="plan backfill", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5],
      retry_condition_fn=only_transient)
def plan_backfill(settings: Settings, version_id: int, chunks: int,
                  run_id: int | None = None) -> ScoringPlan:
    """A candidate version and the unlabelled records it has not scored yet, in id ranges:
    a resumed backfill plans only what is left."""
    return ScoringPlan.of(service.version_scoring_work(settings.engine(), version_id,
                                                       settings.records.mapping(), chunks),
                          run_id)


@lru_cache(maxsize=2)
def _scorer(artifact_uri: str, sha256: str, batch_size: int,
            recorded: tuple[tuple[str, Any], ...] = ()) -> Scorer:
    # One load per worker process and champion, however many chunks it scores. torch
    # loads here, with the model, so that a run with nothing to score never loads it.
    from anomdet.device import configure_threads

    configure_threads()
    loaded = load_artifact(Path(artifact_uri), expected_sha256=sha256, recorded=dict(recorded))
    return Scorer(loaded.model, loaded.tokenizer, loaded.threshold, loaded.max_length,
                  batch_size, loaded.lexical)


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
    def keep(rows: Sequence[ScoreRow]) -> int:
        return repo.keep_scores(engine, model_version_id=version_id, rows=rows,
                                threshold=scorer.threshold, run_id=run_id)

    with unscored_chunks(engine, mapping, version_id=version_id, id_range=id_range,
                         chunk_size=chunk_size) as chunks:
        return score_chunks(scorer, chunks, keep, progress=progress, expected=expected)


@task(name="score id range", cache_policy=NO_CACHE)
def score_range(settings: Settings, plan: ScoringPlan,
                id_range: tuple[Any, Any]) -> ScoreCounts:
    """Score one id range in chunks; each chunk's scores and flags commit on their own."""
    scorer = _scorer(plan.artifact_uri, plan.weights_sha256, settings.score_batch_size,
                     plan.recorded)
    low, high = ("start" if id_range[0] is None else id_range[0],
                 "end" if id_range[1] is None else id_range[1])
    summary = score_id_range(
        scorer, settings.engine(), settings.records.mapping(),
        version_id=plan.version_id, id_range=id_range, chunk_size=settings.chunk_size,
        run_id=plan.run_id,
        progress=ui_progress(f"scoring ids from {low} to {high}"), expected=plan.range_size)
    return summary.counts()


@task(name="finish scoring", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5],
      retry_condition_fn=only_transient)
def finish_scoring(settings: Settings, plan: ScoringPlan,
                   summaries: list[ScoreCounts]) -> ScoringOutcome:
    """Add up the ranges' counts; prune the kept scores of versions past the retention."""
    unkeyed = ScoreCounts(unkeyed=plan.unkeyed, unkeyed_example_ids=plan.unkeyed_ids)
    with settings.session() as session:
        pruned = repo.prune_scores(session=session, model_name=settings.model_name,
                                   keep_versions=settings.scoring.keep_versions)
    return ScoringOutcome(model_version_id=plan.version_id,
                          records=plan.records + plan.unkeyed,
                          counts=ScoreCounts.total([unkeyed, *summaries]), pruned_scores=pruned)
