"""Tasks that decide on and carry out a promotion, as one unit."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.transactions import Transaction, get_transaction

from anomdet.model import save_artifact
from anomdet.promotion import Decision, EvalResult, decide
from anomdet.scoring import Scorer, ScoreSummary, score_all
from anomdet.settings import Settings
from anomdet.training import Challenger
from db import repository as repo
from db.engine import get_engine, session_scope
from db.records import iter_unlabelled, reflect_records_table, unlabelled_id_bounds
from tasks.progress import ui_progress

ARTIFACT_KEY = "artifact_dir"


@task(name="decide promotion", cache_policy=NO_CACHE)
def decide_promotion(challenger: EvalResult, champion: EvalResult | None,
                     settings: Settings) -> Decision:
    """Apply the promotion rule to both models' results on the shared test split."""
    return decide(challenger, champion, settings.promotion.policy())


@task(name="store artifact", cache_policy=NO_CACHE)
def store_artifact(challenger: Challenger, settings: Settings, meta: dict[str, Any]) -> Path:
    """Save the challenger's weights, tokenizer and metadata under the artifacts folder."""
    directory = settings.artifact_root() / settings.model_name / uuid.uuid4().hex
    txn = get_transaction()
    if txn is not None:
        txn.set(ARTIFACT_KEY, str(directory))
    checksum = save_artifact(challenger.model, challenger.tokenizer, directory, meta)
    if txn is not None:
        txn.set("weights_sha256", checksum)
    return directory


@store_artifact.on_rollback
def _remove_artifact(transaction: Transaction) -> None:
    """Something after the save failed: the artifact must leave no trace."""
    directory = transaction.get(ARTIFACT_KEY, None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


@task(name="score unlabelled records", cache_policy=NO_CACHE)
def score_unlabelled(challenger: Challenger, settings: Settings,
                     run_id: int) -> tuple[list[dict[str, Any]], ScoreSummary]:
    """Score every unlabelled record with the challenger; return its flags, not yet written."""
    scorer = Scorer(challenger.scoring_model, challenger.tokenizer, challenger.threshold,
                    challenger.config.max_length, settings.score_batch_size)
    engine, mapping = get_engine(settings.database_url), settings.records.mapping()
    with engine.connect() as conn:
        table = reflect_records_table(conn, mapping)
        total = unlabelled_id_bounds(conn, table, mapping)[2]
        chunks = iter_unlabelled(conn, table, mapping, chunk_size=settings.chunk_size)
        flags, summary = score_all(scorer, chunks, run_id=run_id, total=total,
                                   progress=ui_progress("scoring unlabelled records"))
    get_run_logger().info("scored %d unlabelled records, %d flagged, %d skipped",
                          summary.scored, summary.flagged, summary.skipped)
    return flags, summary


@task(name="commit promotion", cache_policy=NO_CACHE)
def commit_promotion(settings: Settings, *, expected_champion_id: int | None,
                     version_fields: dict[str, Any], flags: list[dict[str, Any]],
                     summary: ScoreSummary) -> tuple[int, int]:
    """One database transaction: insert the version, move the champion, write the flags.

    Returns (version id, version number). Raises `ChampionChanged` if another run
    or a rollback moved the champion after this run evaluated against it.
    """
    with session_scope(get_engine(settings.database_url)) as session:
        number = repo.next_version_number(session=session, model_name=settings.model_name)
        version = repo.promote_new_version(
            session=session, expected_champion_id=expected_champion_id, flags=flags,
            model_name=settings.model_name, version=number, **version_fields,
        )
        if summary.last_id is not None:
            repo.advance_cursor(session=session, model_version_id=version.id,
                                last_record_id=_plain(summary.last_id),
                                scored=summary.scored + summary.skipped)
        return version.id, number


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
