"""Whole transactions on anomdet's tables and the records, for callers that hold no
session (the command line): each function opens its own session or connection, asks the
repository, and returns what was read or written.

The database's own words for a missing view are read here too, so that no caller matches
driver messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy.exc as sa_exc

from db import repository as repo
from db.engine import migrate, session_scope
from db.feedback import QUALITY_VIEW, QUEUE_VIEW, label_queue, version_quality
from db.records import RecordsMapping, count_rows, reflect_records_table, upsert_records

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
