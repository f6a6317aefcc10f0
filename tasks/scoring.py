"""Tasks of the scoring flow."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from anomdet.model import configure_threads, load_artifact, recorded_scoring
from anomdet.scoring import Scorer, ScoreSummary, score_chunk
from anomdet.settings import Settings
from db import repository as repo
from db.engine import get_engine, session_scope
from db.records import id_ranges, iter_unlabelled, reflect_records_table
from tasks.progress import ui_progress


@dataclass(frozen=True)
class ScoringPlan:
    """What one scoring run covers: the champion and the id ranges past its cursor."""

    version_id: int
    artifact_uri: str
    weights_sha256: str
    after_id: Any
    last_id: Any
    ranges: tuple[tuple[Any, Any], ...]
    records: int
    # Threshold, max length and precision as the database records them.
    recorded: tuple[tuple[str, Any], ...] = ()

    @property
    def range_size(self) -> int:
        """Records per range (the last may hold fewer)."""
        return -(-self.records // max(1, len(self.ranges)))


@task(name="plan scoring", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def plan_scoring(settings: Settings, chunks: int) -> ScoringPlan | None:
    """The champion, its cursor and the unlabelled id ranges it has not scored yet."""
    engine, mapping = get_engine(settings.database_url), settings.records.mapping()
    with session_scope(engine) as session:
        champion = repo.get_champion(session=session, model_name=settings.model_name)
        if champion is None:
            return None
        cursor = repo.get_cursor(session=session, model_version_id=champion.id)
    after = cursor.last_record_id["id"] if cursor and cursor.last_record_id else None
    with engine.connect() as conn:
        table = reflect_records_table(conn, mapping)
        ranges, count = id_ranges(conn, table, mapping, parts=chunks, after=after)
    return ScoringPlan(champion.id, champion.artifact_uri, champion.weights_sha256, after,
                       ranges[-1][1] if ranges else after, tuple(ranges), count,
                       tuple(recorded_scoring(champion.threshold,
                                              champion.hyperparameters).items()))


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
    """Score one id range in chunks; each chunk's flags commit on their own, duplicates ignored."""
    scorer = _scorer(plan.artifact_uri, plan.weights_sha256, settings.score_batch_size,
                     plan.recorded)
    engine, mapping = get_engine(settings.database_url), settings.records.mapping()
    summary = ScoreSummary()
    progress = ui_progress(f"scoring ids {id_range[0]} to {id_range[1]}")
    with engine.connect() as conn:
        table = reflect_records_table(conn, mapping)
        for chunk in iter_unlabelled(conn, table, mapping, chunk_size=settings.chunk_size,
                                     id_range=id_range):
            flags = score_chunk(scorer, chunk, summary)
            done = summary.scored + summary.skipped
            progress(done, max(done, plan.range_size))
            with session_scope(engine) as session:
                repo.insert_flags(session=session, model_version_id=plan.version_id, rows=flags)
    return summary.as_dict()


@task(name="advance scoring cursor", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=[2, 5])
def finish_scoring(settings: Settings, plan: ScoringPlan,
                   summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Move the champion's cursor past every range scored; add up the summaries."""
    total = {"model_version_id": plan.version_id, "records": plan.records, "scored": 0,
             "flagged": 0, "skipped": 0, "skipped_example_ids": []}
    for part in summaries:
        for key in ("scored", "flagged", "skipped"):
            total[key] += part[key]
        total["skipped_example_ids"] = (total["skipped_example_ids"]
                                        + part["skipped_example_ids"])[:20]
    if plan.ranges:
        with session_scope(get_engine(settings.database_url)) as session:
            repo.advance_cursor(session=session, model_version_id=plan.version_id,
                                last_record_id=plan.last_id,
                                scored=total["scored"] + total["skipped"])
    return total
