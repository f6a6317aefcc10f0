"""Tasks of the scoring flow."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from anomdet.artifact import load_artifact, recorded_scoring
from anomdet.device import configure_threads
from anomdet.scoring import Scorer, score_id_range
from anomdet.settings import Settings
from db import repository as repo
from db.engine import session_scope
from db.models import ModelVersion
from db.records import id_ranges, reflect_records_table, unkeyed_unlabelled
from tasks.database import only_transient
from tasks.progress import ui_progress


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

    @property
    def range_size(self) -> int:
        """Records per range (the last may hold fewer)."""
        return -(-self.records // max(1, len(self.ranges)))


@task(name="plan scoring", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5],
      retry_condition_fn=only_transient)
def plan_scoring(settings: Settings, chunks: int) -> ScoringPlan | None:
    """The champion and the unlabelled records it has not scored, cut into id ranges.

    First the flags of records whose text changed since they were flagged are marked, so
    that the views hide them until the new texts are scored (see
    `db.repository.retire_changed_flags`)."""
    engine, mapping = settings.engine(), settings.records.mapping()
    with session_scope(engine) as session:
        champion = repo.get_champion(session=session, model_name=settings.model_name)
        if champion is not None:
            records = reflect_records_table(session.connection(), mapping)
            repo.retire_changed_flags(session=session, records=records, mapping=mapping)
    return None if champion is None else plan_for(settings, champion, chunks)


@task(name="plan backfill", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5],
      retry_condition_fn=only_transient)
def plan_backfill(settings: Settings, version_id: int, chunks: int,
                  run_id: int | None = None) -> ScoringPlan:
    """A candidate version and the unlabelled records it has not scored yet, in id ranges:
    a resumed backfill plans only what is left."""
    with settings.session() as session:
        version = session.get(ModelVersion, version_id)
        if version is None:
            raise ValueError(f"model version id {version_id} does not exist")
        return plan_for(settings, version, chunks, run_id)


def plan_for(settings: Settings, version: ModelVersion, chunks: int,
             run_id: int | None = None) -> ScoringPlan:
    """What `version` has left to score, cut into about `chunks` id ranges."""
    engine, mapping = settings.engine(), settings.records.mapping()
    with engine.connect() as conn:
        table = reflect_records_table(conn, mapping)
        ranges, count = id_ranges(conn, table, mapping, parts=chunks, version_id=version.id)
        unkeyed, examples = unkeyed_unlabelled(conn, table, mapping)
    return ScoringPlan(version.id, version.artifact_uri, version.weights_sha256,
                       tuple(ranges), count, unkeyed, tuple(examples),
                       tuple(recorded_scoring(version.threshold,
                                              version.hyperparameters).items()),
                       version=version.version, run_id=run_id)


@lru_cache(maxsize=2)
def _scorer(artifact_uri: str, sha256: str, batch_size: int,
            recorded: tuple[tuple[str, Any], ...] = ()) -> Scorer:
    # One load per worker process and champion, however many chunks it scores.
    configure_threads()
    loaded = load_artifact(Path(artifact_uri), expected_sha256=sha256, recorded=dict(recorded))
    return Scorer(loaded.model, loaded.tokenizer, loaded.threshold, loaded.max_length,
                  batch_size)


@task(name="score id range", cache_policy=NO_CACHE)
def score_range(settings: Settings, plan: ScoringPlan,
                id_range: tuple[Any, Any]) -> dict[str, Any]:
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
    return summary.as_dict()


@task(name="finish scoring", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5],
      retry_condition_fn=only_transient)
def finish_scoring(settings: Settings, plan: ScoringPlan,
                   summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the summaries; prune the kept scores of versions past the retention."""
    total: dict[str, Any] = {
        "model_version_id": plan.version_id, "records": plan.records + plan.unkeyed,
        "scored": 0, "flagged": 0, "skipped": 0, "skipped_example_ids": [],
        "unkeyed": plan.unkeyed, "unkeyed_example_ids": list(plan.unkeyed_ids)}
    for part in summaries:
        for key in ("scored", "flagged", "skipped"):
            total[key] += part[key]
        total["skipped_example_ids"] = (total["skipped_example_ids"]
                                        + part["skipped_example_ids"])[:20]
    with settings.session() as session:
        total["pruned_scores"] = repo.prune_scores(
            session=session, model_name=settings.model_name,
            keep_versions=settings.scoring.keep_versions)
    return total
