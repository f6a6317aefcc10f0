"""Whole transactions on anomdet's tables and the records, for callers that hold no
session (the command line, the tasks): each function opens its own session or
connection, asks the repository, and returns what was read or written.

The database's own words for a missing view are read here too, so that no caller matches
driver messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy.exc as sa_exc

from db import repository as repo
from db.checks import unreadable_timestamps
from db.engine import migrate, session_scope
from db.feedback import (
    QUALITY_VIEW,
    QUEUE_VIEW,
    LabelNews,
    ensure_feedback_views,
    label_news,
    label_queue,
    version_quality,
)
from db.records import (
    IdRange,
    RecordsMapping,
    count_rows,
    id_ranges,
    read_labelled,
    reflect_records_table,
    sample_unlabelled,
    unkeyed_unlabelled,
    upsert_records,
)

if TYPE_CHECKING:
    import pandas as pd
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from db.models import ModelVersion, Run


#: The views' reads as a person types them in a SQL client, for a caller to show.
FLAGGED_QUERY = f"SELECT * FROM {repo.FLAGGED_VIEW} ORDER BY score DESC"
QUEUE_QUERY = f"SELECT * FROM {QUEUE_VIEW} ORDER BY rank"
QUALITY_QUERY = f"SELECT * FROM {QUALITY_VIEW}"


def verdict_sql(mapping: RecordsMapping) -> str:
    """How a reviewer records a verdict on a record, as a statement to complete."""
    return (f"UPDATE {mapping.table} SET {mapping.label_column} = 1 (anomaly) or 0 (normal) "
            f"WHERE {mapping.id_column} = ...")


class FlaggedViewMissing(LookupError):
    """anomdet_flagged cannot be read. `reason` says what its records table lacks, or is
    None when the table is fine and the view was never made."""

    def __init__(self, reason: str | None) -> None:
        self.reason = reason
        super().__init__(reason or "anomdet_flagged does not exist")


def prepare(engine: sa.Engine, mapping: RecordsMapping, queue_sample_every: int) -> None:
    """Migrate the anomdet tables, check the records table against its mapping, and
    (re)create the views on it, the views in one transaction."""
    migrate(engine)
    with engine.begin() as conn:
        table = reflect_records_table(conn, mapping)
        repo.ensure_flagged_view(conn, table, mapping)
        ensure_feedback_views(conn, table, mapping, queue_sample_every)


def champion_and_runs(engine: sa.Engine, model_name: str, limit: int
                      ) -> tuple[ModelVersion | None, list[Run]]:
    """The champion of `model_name` (None before a first promotion) and its latest
    `limit` runs, newest first."""
    with session_scope(engine) as session:
        return (repo.get_champion(session=session, model_name=model_name),
                repo.recent_runs(session=session, model_name=model_name, limit=limit))


def champion_flags(engine: sa.Engine, model_name: str, mapping: RecordsMapping, limit: int
                   ) -> tuple[ModelVersion | None, list[dict[str, Any]]]:
    """The champion and the top `limit` rows of anomdet_flagged; no rows before a first
    promotion, when the view may not exist yet. FlaggedViewMissing when it cannot be read."""
    try:
        with session_scope(engine) as session:
            champion = repo.get_champion(session=session, model_name=model_name)
            rows = repo.flagged_rows(session=session, limit=limit) if champion else []
    except sa_exc.ProgrammingError:  # no such view (PostgreSQL)
        raise _flagged_view_missing(engine, mapping) from None
    except sa_exc.OperationalError as exc:
        # SQLite's words for a missing view, or for the missing table of an existing one.
        if "no such table" not in str(exc.orig):
            raise
        raise _flagged_view_missing(engine, mapping) from None
    return champion, rows


def _flagged_view_missing(engine: sa.Engine, mapping: RecordsMapping) -> FlaggedViewMissing:
    """Why anomdet_flagged cannot be read: the records it joins are gone, or the view was
    never made."""
    try:
        reflect_records_table(engine, mapping)
    except ValueError as exc:
        return FlaggedViewMissing(str(exc))
    return FlaggedViewMissing(None)


def versions_and_quality(engine: sa.Engine, model_name: str, mapping: RecordsMapping
                         ) -> tuple[list[ModelVersion], dict[int, dict[str, Any]]]:
    """Every version of `model_name`, newest first, and anomdet_version_quality's rows by
    version number (none while there are no versions, or no records table)."""
    with session_scope(engine) as session:
        versions = repo.list_versions(session=session, model_name=model_name)
        quality = _version_quality(session, model_name, mapping) if versions else {}
    return versions, quality


def _version_quality(session: Session, model_name: str, mapping: RecordsMapping
                     ) -> dict[int, dict[str, Any]]:
    try:
        records = reflect_records_table(session.connection(), mapping)
    except ValueError:
        return {}
    return version_quality(session, records, mapping, model_name)


def champion_label_queue(engine: sa.Engine, model_name: str, mapping: RecordsMapping,
                         sample_every: int, limit: int) -> list[dict[str, Any]] | None:
    """The top `limit` rows of anomdet_label_queue; None while `model_name` has no
    champion, whose scores the queue is made of. ValueError when the records table
    cannot be read."""
    with session_scope(engine) as session:
        if repo.get_champion(session=session, model_name=model_name) is None:
            return None
        records = reflect_records_table(session.connection(), mapping)
        return label_queue(session, records, mapping, model_name, sample_every, limit)


class Rollback(NamedTuple):
    """A rollback as recorded: the version made champion, the champion it replaced (None
    when there was none) and the run that records it."""

    version: int
    previous_version: int | None
    run_id: int


def roll_back(engine: sa.Engine, model_name: str, version: int, reason: str,
              verify: Callable[[ModelVersion], object]) -> Rollback:
    """Make `version` champion again, in one transaction (see repo.rollback_champion,
    whose ValueError and ChampionChanged refuse it)."""
    with session_scope(engine) as session:
        target, run = repo.rollback_champion(session=session, model_name=model_name,
                                             version=version, reason=reason, verify=verify)
        previous = (session.get(type(target), run.champion_version_id)
                    if run.champion_version_id is not None else None)
        return Rollback(target.version, previous.version if previous else None, run.id)


def count_runs(engine: sa.Engine, model_name: str) -> int:
    """How many runs `model_name` has had; the tables are migrated first."""
    migrate(engine)
    with session_scope(engine) as session:
        return repo.count_runs(session=session, model_name=model_name)


def write_records(engine: sa.Engine, table: sa.Table, mapping: RecordsMapping,
                  frame: pd.DataFrame) -> int:
    """Insert or update `frame`'s records by id, all or none; the rows written."""
    with engine.begin() as conn:
        return upsert_records(conn, table, mapping, frame)


def seed_if_empty(engine: sa.Engine, table: sa.Table, mapping: RecordsMapping,
                  records: Callable[[], pd.DataFrame]) -> pd.DataFrame | None:
    """Write the records that `records` makes when `table` holds none, in the transaction
    that found it empty; what was written, or None for a table that has rows."""
    with engine.begin() as conn:
        if count_rows(conn, table):
            return None
        frame = records()
        upsert_records(conn, table, mapping, frame)
        return frame


def labelled_records(engine: sa.Engine, mapping: RecordsMapping, *, chunk_size: int,
                     sample: int | None, seed: int) -> pd.DataFrame:
    """The labelled records under the standard column names (see `read_labelled`). A
    ValueError from timestamps the driver cannot read names their table, column and rows."""
    with engine.connect() as conn:
        table = reflect_records_table(conn, mapping)
        try:
            return read_labelled(conn, table, mapping, chunk_size=chunk_size, sample=sample,
                                 seed=seed)
        except ValueError as exc:
            problem = unreadable_timestamps(conn, mapping)
            if problem is None:
                raise
            raise ValueError(problem) from exc


def champion_label_news(engine: sa.Engine, model_name: str, mapping: RecordsMapping
                        ) -> LabelNews:
    """The labels in the records table that the champion of `model_name` never trained on."""
    with session_scope(engine) as session:
        champion = repo.get_champion(session=session, model_name=model_name)
        records = reflect_records_table(session.connection(), mapping)
        return label_news(session.connection(), records, mapping, champion)


def quality_newest_first(engine: sa.Engine, model_name: str, mapping: RecordsMapping
                         ) -> list[dict[str, Any]]:
    """anomdet_version_quality's rows of `model_name`, newest version first. Unlike
    `versions_and_quality`, a records table that cannot be read raises its ValueError."""
    with session_scope(engine) as session:
        records = reflect_records_table(session.connection(), mapping)
        rows = version_quality(session, records, mapping, model_name)
    return [rows[v] for v in sorted(rows, reverse=True)]


class CheckInputs(NamedTuple):
    """What the check flow reads in one transaction: the label news, the champion's
    artifact folder (None without a champion), the details of the latest retraining
    runs, newest first, and the unlabelled texts to profile for drift (empty unless asked
    for and there is a champion)."""

    news: LabelNews
    champion_artifact: str | None
    retrain_details: list[dict[str, Any]]
    unlabelled_texts: list[str]


def check_inputs(engine: sa.Engine, model_name: str, mapping: RecordsMapping, *,
                 recent: int, profile_rows: int | None) -> CheckInputs:
    """The check flow's reads (see `CheckInputs`): labels since the champion, the
    retraining runs among the latest `recent` runs, and up to `profile_rows` unlabelled
    texts, newest first, when `profile_rows` is given and there is a champion."""
    with session_scope(engine) as session:
        conn = session.connection()
        records = reflect_records_table(conn, mapping)
        champion = repo.get_champion(session=session, model_name=model_name)
        news = label_news(conn, records, mapping, champion)
        runs = [r.details or {} for r in repo.recent_runs(
            session=session, model_name=model_name, limit=recent) if r.kind == "retrain"]
        texts = (sample_unlabelled(conn, records, mapping, profile_rows)
                 if champion is not None and profile_rows else [])
        return CheckInputs(news, champion.artifact_uri if champion else None, runs, texts)


class Flip(NamedTuple):
    """A candidate made champion: its id and number, the records it scored and flagged,
    and why the old versions' scores were not pruned (None when they were)."""

    version_id: int
    version: int
    scored: int
    flagged: int
    prune_error: str | None


def flip_and_prune(engine: sa.Engine, model_name: str, candidate_id: int,
                   expected_champion_id: int | None, keep_versions: int) -> Flip:
    """Make the backfilled candidate champion (see `repo.flip_champion`) in one short
    transaction; a candidate that is champion already (a retried call whose first try
    went through) is taken as flipped. Then, apart, prune the kept scores of versions
    past `keep_versions`: a failed prune leaves them for the next one and is reported,
    not raised. Raises `ChampionChanged` when the champion moved meanwhile."""
    with session_scope(engine) as session:
        candidate = repo.get_version_by_id(session=session, version_id=candidate_id)
        if candidate is None or candidate.status != "champion":
            candidate = repo.flip_champion(session=session, candidate_id=candidate_id,
                                           expected_champion_id=expected_champion_id)
        scored = repo.count_scores(session=session, model_version_id=candidate_id)
        flagged = repo.count_flags(session=session, model_version_id=candidate_id)
        flipped = (candidate.id, candidate.version, scored, flagged)
    try:
        with session_scope(engine) as session:
            repo.prune_scores(session=session, model_name=model_name,
                              keep_versions=keep_versions)
    except sa_exc.SQLAlchemyError as exc:
        return Flip(*flipped, prune_error=str(exc))
    return Flip(*flipped, prune_error=None)


class ScoringWork(NamedTuple):
    """A version and what it has left to score: the id ranges holding the unlabelled
    records it has not scored for their current text, how many those are, and how many
    unlabelled records have no id of their own to score them by (with some of their ids)."""

    version: ModelVersion
    ranges: list[IdRange]
    records: int
    unkeyed: int
    unkeyed_ids: list[str]


def champion_scoring_work(engine: sa.Engine, model_name: str, mapping: RecordsMapping,
                          parts: int) -> ScoringWork | None:
    """The champion's work cut into about `parts` ranges, None without a champion.

    First the flags of records whose text changed since they were flagged are marked, so
    that the views hide them until the new texts are scored (see
    `repo.retire_changed_flags`)."""
    with session_scope(engine) as session:
        champion = repo.get_champion(session=session, model_name=model_name)
        if champion is None:
            return None
        records = reflect_records_table(session.connection(), mapping)
        repo.retire_changed_flags(session=session, records=records, mapping=mapping)
    return _scoring_work(engine, champion, mapping, parts)


def version_scoring_work(engine: sa.Engine, version_id: int, mapping: RecordsMapping,
                         parts: int) -> ScoringWork:
    """The work left to version id `version_id` (a candidate being backfilled, whose
    resumed backfill plans only what is left), cut into about `parts` ranges."""
    with session_scope(engine) as session:
        version = repo.get_version_by_id(session=session, version_id=version_id)
    if version is None:
        raise ValueError(f"model version id {version_id} does not exist")
    return _scoring_work(engine, version, mapping, parts)


def _scoring_work(engine: sa.Engine, version: ModelVersion, mapping: RecordsMapping,
                  parts: int) -> ScoringWork:
    with engine.connect() as conn:
        table = reflect_records_table(conn, mapping)
        ranges, count = id_ranges(conn, table, mapping, parts=parts, version_id=version.id)
        unkeyed, examples = unkeyed_unlabelled(conn, table, mapping)
    return ScoringWork(version, ranges, count, unkeyed, examples)
