"""Tasks of the scoring flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from anomdet.model import configure_threads, load_artifact
from anomdet.scoring import Scorer, ScoreSummary, score_chunk
from anomdet.settings import Settings
from db import repository as repo
from db.engine import get_engine, session_scope
from db.records import iter_unlabelled, reflect_records_table


@task(name="load champion scorer", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def load_scorer(settings: Settings) -> tuple[int, Scorer] | None:
    """The champion's id and a scorer built from its verified artifact."""
    with session_scope(get_engine(settings.database_url)) as session:
        champion = repo.get_champion(session=session, model_name=settings.model_name)
    if champion is None:
        return None
    configure_threads()
    loaded = load_artifact(Path(champion.artifact_uri), expected_sha256=champion.weights_sha256)
    return champion.id, Scorer(loaded.model, loaded.tokenizer, loaded.threshold,
                               loaded.max_length, settings.score_batch_size)


@task(name="score new records", cache_policy=NO_CACHE)
def score_new_records(settings: Settings, version_id: int, scorer: Scorer) -> dict[str, Any]:
    """Stream unlabelled records past the champion's cursor; flags and cursor move together.

    Each chunk's flags and the cursor advance commit in one transaction, so a
    run stopped at any point resumes where it left off and adds nothing twice.
    """
    engine, mapping = get_engine(settings.database_url), settings.records.mapping()
    summary = ScoreSummary()
    with session_scope(engine) as session:
        cursor = repo.get_cursor(session=session, model_version_id=version_id)
        start = cursor.last_record_id["id"] if cursor and cursor.last_record_id else None
    with engine.connect() as conn:
        table = reflect_records_table(conn, mapping)
        chunks = iter_unlabelled(conn, table, mapping, chunk_size=settings.chunk_size,
                                 after=start)
        for chunk in chunks:
            before = summary.scored + summary.skipped
            flags = score_chunk(scorer, chunk, summary)
            with session_scope(engine) as session:
                repo.insert_flags(session=session, model_version_id=version_id, rows=flags)
                repo.advance_cursor(session=session, model_version_id=version_id,
                                    last_record_id=_plain(summary.last_id),
                                    scored=summary.scored + summary.skipped - before)
    return {"model_version_id": version_id, **summary.as_dict()}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
