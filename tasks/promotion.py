"""Tasks that decide on and carry out a promotion, as one unit."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.transactions import Transaction, get_transaction
from sqlalchemy.exc import SQLAlchemyError

from anomdet.model import save_artifact
from anomdet.promotion import Decision, EvalResult, decide
from anomdet.scoring import Scorer, ScoreSummary, score_all
from anomdet.settings import Settings
from anomdet.training import Challenger
from db import repository as repo
from db.engine import get_engine, session_scope
from db.records import (
    count_unlabelled,
    iter_unlabelled,
    reflect_records_table,
    unkeyed_unlabelled,
)
from tasks.database import IO_RETRIES
from tasks.progress import ui_progress

ARTIFACT_KEY = "artifact_dir"


@dataclass(frozen=True)
class StoredArtifact:
    """A saved model: its folder and the digest the database keeps to verify it."""

    path: Path
    checksum: str  # SHA-256 of the artifact's manifest, which holds every file's SHA-256


@task(name="decide promotion", cache_policy=NO_CACHE)
def decide_promotion(challenger: EvalResult, champion: EvalResult | None,
                     settings: Settings, baseline: EvalResult | None = None) -> Decision:
    """Apply the promotion rule to the models' results on the shared test split."""
    return decide(challenger, champion, settings.promotion.policy(), baseline)


# A failed try leaves nothing (the save renames a finished folder into place), so a
# retry writes a new folder; the rollback hook removes whichever folder was saved.
@task(name="store artifact", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30])
def store_artifact(challenger: Challenger, settings: Settings,
                   meta: dict[str, Any]) -> StoredArtifact:
    """Save the challenger's weights, tokenizer and metadata under the artifacts folder."""
    directory = settings.artifact_root() / settings.model_name / uuid.uuid4().hex
    txn = get_transaction()
    if txn is not None:
        # Known before the save: whatever fails after it, the rollback removes the folder.
        txn.set(ARTIFACT_KEY, str(directory))
    checksum = save_artifact(challenger.model, challenger.tokenizer, directory, meta)
    return StoredArtifact(path=directory, checksum=checksum)


@store_artifact.on_rollback
def _remove_artifact(transaction: Transaction) -> None:
    """Something after the save failed: the artifact must leave no trace."""
    directory = transaction.get(ARTIFACT_KEY, None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


@task(name="score unlabelled records", cache_policy=NO_CACHE, **IO_RETRIES)
def score_unlabelled(challenger: Challenger, settings: Settings,
                     run_id: int) -> tuple[list[repo.ScoreRow], ScoreSummary]:
    """Score every unlabelled record with the challenger; return its scores, not yet written."""
    scorer = Scorer(challenger.scoring_model, challenger.tokenizer, challenger.threshold,
                    challenger.config.max_length, settings.score_batch_size)
    engine, mapping = get_engine(settings.database_url), settings.records.mapping()
    with engine.connect() as conn:
        table = reflect_records_table(conn, mapping)
        total = count_unlabelled(conn, table, mapping)
        chunks = iter_unlabelled(conn, table, mapping, chunk_size=settings.chunk_size)
        rows, summary = score_all(scorer, chunks, total=total,
                                  progress=ui_progress("scoring unlabelled records"))
        summary.unkeyed, summary.unkeyed_ids = unkeyed_unlabelled(conn, table, mapping)
    logger = get_run_logger()
    logger.info("scored %d unlabelled records, %d flagged, %d skipped",
                summary.scored, summary.flagged, summary.skipped)
    if summary.unkeyed:
        logger.warning("%d unlabelled records were not scored: their id is NULL or held by "
                       "another record too (e.g. %s)", summary.unkeyed,
                       ", ".join(summary.unkeyed_ids[:5]))
    return rows, summary


# Retried when the connection fails. A try whose commit went through but whose answer
# was lost is found by its run id: the retry returns that version rather than meeting
# its own champion in the compare-and-set (which would abandon, and remove, its files).
@task(name="commit promotion", cache_policy=NO_CACHE, **IO_RETRIES)
def commit_promotion(settings: Settings, *, expected_champion_id: int | None,
                     version_fields: dict[str, Any],
                     scores: list[repo.ScoreRow]) -> tuple[int, int]:
    """One database transaction: insert the version, move the champion, write its kept
    scores and its flags. Then, apart, prune the scores of versions past the retention.

    Returns (version id, version number). Raises `ChampionChanged` if another run
    or a rollback moved the champion after this run evaluated against it.
    """
    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:
        run_id = version_fields.get("run_id")
        done = run_id and repo.version_of_run(session=session, model_name=settings.model_name,
                                              run_id=run_id)
        if done:
            return done.id, done.version
        number = repo.next_version_number(session=session, model_name=settings.model_name)
        version = repo.promote_new_version(
            session=session, expected_champion_id=expected_champion_id, scores=scores,
            model_name=settings.model_name, version=number, **version_fields,
        )
        version_id = version.id
    # Not in the promotion's transaction, which stays short; and a failed prune must not
    # fail this task, whose failure would remove the artifact the new champion uses. The
    # old scores wait for the next prune.
    try:
        with session_scope(engine) as session:
            repo.prune_scores(session=session, model_name=settings.model_name,
                              keep_versions=settings.scoring.keep_versions)
    except SQLAlchemyError as exc:
        get_run_logger().warning("old versions' scores were not pruned: %s", exc)
    return version_id, number
