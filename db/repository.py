"""Repository functions: a keyword-only `session` in, typed rows out.

Every function here runs inside the caller's transaction; callers decide what
commits together (see `db.engine.session_scope`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Flag, ModelVersion, Run, ScoringCursor, utcnow
from db.records import RecordsMapping

logger = logging.getLogger(__name__)

FLAGGED_VIEW = "anomdet_flagged"


def json_safe(value: Any) -> Any:
    """NaN and infinities as null, numpy scalars as Python numbers: PostgreSQL's JSON
    rejects NaN, and a metric that could not be computed is honestly 'no value'."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ChampionChanged(RuntimeError):
    """The champion moved after a run evaluated against it: promotion must not proceed."""


def get_champion(*, session: Session, model_name: str) -> ModelVersion | None:
    """The current champion of `model_name`, if any."""
    query = sa.select(ModelVersion).where(
        ModelVersion.model_name == model_name, ModelVersion.status == "champion"
    )
    return session.scalars(query).one_or_none()


def get_version(*, session: Session, model_name: str, version: int) -> ModelVersion | None:
    """One version of `model_name` by its number."""
    query = sa.select(ModelVersion).where(
        ModelVersion.model_name == model_name, ModelVersion.version == version
    )
    return session.scalars(query).one_or_none()


def list_versions(*, session: Session, model_name: str) -> list[ModelVersion]:
    """Every version of `model_name`, newest first."""
    query = (
        sa.select(ModelVersion)
        .where(ModelVersion.model_name == model_name)
        .order_by(ModelVersion.version.desc())
    )
    return list(session.scalars(query))


def next_version_number(*, session: Session, model_name: str) -> int:
    """The number the next version of `model_name` gets."""
    query = sa.select(sa.func.max(ModelVersion.version)).where(
        ModelVersion.model_name == model_name
    )
    return int(session.scalar(query) or 0) + 1


def start_run(
    *, session: Session, model_name: str, kind: str = "retrain",
    flow_run_id: str | None = None, parameters: dict[str, Any] | None = None,
    process: dict[str, Any] | None = None,
) -> Run:
    """Insert a run row in state `running`; `process` (host, pid) identifies who runs it."""
    run = Run(model_name=model_name, kind=kind, flow_run_id=flow_run_id,
              parameters=json_safe(parameters), details={"process": process} if process else None,
              state="running", started_at=utcnow())
    session.add(run)
    session.flush()
    return run


def update_run(*, session: Session, run_id: int, **fields: Any) -> Run:
    """Set fields of a run row."""
    run = session.get(Run, run_id)
    if run is None:
        raise ValueError(f"run {run_id} does not exist in anomdet_runs")
    for name, value in fields.items():
        if not hasattr(Run, name):
            raise ValueError(f"anomdet_runs has no column {name!r}")
        if name == "details" and run.details:
            value = {**run.details, **value}  # keep what earlier steps recorded
        setattr(run, name, json_safe(value))
    session.flush()
    return run


def finish_run(
    *, session: Session, run_id: int, state: str, decision: str | None, reason: str,
    **fields: Any,
) -> Run:
    """Close a run with its final state, decision and reason in words."""
    return update_run(session=session, run_id=run_id, state=state, decision=decision,
                      reason=reason, ended_at=utcnow(), **fields)


def close_abandoned_runs(
    *, session: Session, model_name: str, host: str, is_alive: Callable[[int], bool]
) -> list[int]:
    """Mark `running` runs of this host whose process is gone as failed; return their ids.

    A process killed outright (SIGKILL, power loss) cannot record its own end; its
    run row would otherwise read `running` forever.
    """
    closed = []
    query = sa.select(Run).where(Run.model_name == model_name, Run.state == "running")
    for run in session.scalars(query):
        process = (run.details or {}).get("process") or {}
        if process.get("host") == host and not is_alive(int(process.get("pid", 0))):
            finish_run(session=session, run_id=run.id, state="failed", decision="failed",
                       reason=f"abandoned: process {process.get('pid')} on {host} ended "
                              "without recording an outcome")
            closed.append(run.id)
    return closed


def count_runs(*, session: Session, model_name: str) -> int:
    """How many runs `model_name` has had, whatever their outcome."""
    query = sa.select(sa.func.count()).select_from(Run).where(Run.model_name == model_name)
    return int(session.scalar(query))


def recent_runs(*, session: Session, model_name: str, limit: int = 10) -> list[Run]:
    """The latest runs of `model_name`, newest first."""
    query = (
        sa.select(Run).where(Run.model_name == model_name)
        .order_by(Run.id.desc()).limit(limit)
    )
    return list(session.scalars(query))


def _retire_expected_champion(
    session: Session, model_name: str, expected_champion_id: int | None
) -> None:
    """Compare-and-set: retire the champion only if it is still the one evaluated against."""
    now = utcnow()
    if expected_champion_id is None:
        if get_champion(session=session, model_name=model_name) is not None:
            raise ChampionChanged(
                f"a champion of {model_name!r} appeared while this run evaluated against none"
            )
        return
    result = session.execute(
        sa.update(ModelVersion)
        .where(ModelVersion.id == expected_champion_id, ModelVersion.status == "champion")
        .values(status="retired", retired_at=now)
    )
    if result.rowcount != 1:
        raise ChampionChanged(
            f"the champion of {model_name!r} is no longer version id {expected_champion_id}: "
            "another run or a rollback moved it after this run evaluated against it"
        )


def promote_new_version(
    *, session: Session, expected_champion_id: int | None, flags: Sequence[dict[str, Any]],
    **version_fields: Any,
) -> ModelVersion:
    """Insert a version as champion, retiring the expected champion, and write its flags.

    All in the caller's transaction: on any error nothing of it remains. Raises
    `ChampionChanged` if the champion is not the one the run evaluated against.
    """
    model_name = version_fields["model_name"]
    _retire_expected_champion(session, model_name, expected_champion_id)
    now = utcnow()
    fields = {k: json_safe(v) if isinstance(v, dict) else v for k, v in version_fields.items()}
    version = ModelVersion(status="champion", promoted_at=now, created_at=now, **fields)
    session.add(version)
    try:
        session.flush()
    except IntegrityError as exc:
        # The partial unique index caught a champion inserted by a concurrent run.
        raise ChampionChanged(f"another champion of {model_name!r} was promoted meanwhile") from exc
    insert_flags(session=session, model_version_id=version.id, rows=flags)
    return version


def set_champion(
    *, session: Session, model_name: str, version: int, expected_champion_id: int | None
) -> ModelVersion:
    """Make an existing version champion again (rollback), by compare-and-set."""
    target = get_version(session=session, model_name=model_name, version=version)
    if target is None:
        known = [v.version for v in list_versions(session=session, model_name=model_name)]
        raise ValueError(f"{model_name!r} has no version {version}; versions: {known or 'none'}")
    if target.status == "champion":
        raise ValueError(f"version {version} of {model_name!r} is already the champion")
    _retire_expected_champion(session, model_name, expected_champion_id)
    session.flush()
    target.status = "champion"
    target.promoted_at = utcnow()
    target.retired_at = None
    session.flush()
    return target


def rollback_champion(
    *, session: Session, model_name: str, version: int, reason: str
) -> tuple[ModelVersion, Run]:
    """Make `version` champion again and record it in anomdet_runs like a decision."""
    if not reason.strip():
        raise ValueError("a rollback needs a reason in words (--reason)")
    current = get_champion(session=session, model_name=model_name)
    run = start_run(session=session, model_name=model_name, kind="rollback",
                    parameters={"version": version})
    target = set_champion(session=session, model_name=model_name, version=version,
                          expected_champion_id=current.id if current else None)
    was = f"version {_number(session, current)}" if current else "no champion"
    finish_run(session=session, run_id=run.id, state="completed", decision="rolled_back",
               reason=f"rolled back from {was} to version {version}: {reason.strip()}",
               champion_version_id=current.id if current else None,
               challenger_version_id=target.id, champion_metrics=target.metrics)
    return target, run


def _number(session: Session, version: ModelVersion | None) -> int | None:
    return version.version if version else None


def insert_flags(
    *, session: Session, model_version_id: int, rows: Sequence[dict[str, Any]],
    batch_size: int = 20_000,
) -> int:
    """Bulk-insert flag rows, skipping (record, version) pairs that exist already.

    Returns how many rows were really inserted. One prepared statement per batch,
    never one ORM object per row; reruns add nothing twice (ON CONFLICT DO NOTHING).
    """
    if not rows:
        return 0
    now = utcnow()
    payload = [
        (str(r["record_id"]), model_version_id, float(r["score"]), float(r["threshold"]),
         r.get("run_id"), r.get("flagged_at", now))
        for r in rows
    ]
    write = _insert_flags_postgres if session.get_bind().dialect.name == "postgresql" \
        else _insert_flags_sqlite
    return sum(write(session, payload[i : i + batch_size])
               for i in range(0, len(payload), batch_size))


# Flag rows travel as tuples in this order.
_FLAG_COLUMNS = ("record_id", "model_version_id", "score", "threshold", "run_id", "flagged_at")
_SQLITE_INSERT_FLAGS = (
    f"INSERT INTO {Flag.__tablename__} ({', '.join(_FLAG_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_FLAG_COLUMNS))}) "
    "ON CONFLICT (record_id, model_version_id) DO NOTHING"
)


def _insert_flags_sqlite(session: Session, payload: list[tuple[Any, ...]]) -> int:
    # Written against the driver: SQLAlchemy's executemany turns every row into
    # processed parameters in Python, which took longer than SQLite's writing itself
    # (about 135k against 310k rows/s here). Plain tuples go straight to sqlite3's
    # executemany; timestamps get SQLAlchemy's own storage format, once per value.
    conn = session.connection()
    column_type = Flag.__table__.c.flagged_at.type
    to_db = column_type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    stamps = {stamp: to_db(stamp) if to_db else stamp for stamp in {row[-1] for row in payload}}
    rows = [(*row[:-1], stamps[row[-1]]) for row in payload]
    return max(0, conn.exec_driver_sql(_SQLITE_INSERT_FLAGS, rows).rowcount)


_PG_INSERT_FLAGS = sa.text(
    # The rows travel as one array per column and are unnested by the server: one
    # statement and one round trip per batch, whatever its size.
    "INSERT INTO anomdet_flags (record_id, model_version_id, score, threshold, run_id, "
    "flagged_at) SELECT * FROM unnest(CAST(:record_id AS varchar[]), CAST(:model_version_id "
    "AS integer[]), CAST(:score AS double precision[]), CAST(:threshold AS double precision[]), "
    "CAST(:run_id AS integer[]), CAST(:flagged_at AS timestamptz[])) "
    "ON CONFLICT (record_id, model_version_id) DO NOTHING"
)


def _insert_flags_postgres(session: Session, payload: list[tuple[Any, ...]]) -> int:
    columns = dict(zip(_FLAG_COLUMNS, (list(c) for c in zip(*payload, strict=True)),
                       strict=True))
    return max(0, session.execute(_PG_INSERT_FLAGS, columns).rowcount)


def count_flags(*, session: Session, model_version_id: int | None = None) -> int:
    """Flag rows in total, or for one version."""
    query = sa.select(sa.func.count()).select_from(Flag)
    if model_version_id is not None:
        query = query.where(Flag.model_version_id == model_version_id)
    return int(session.scalar(query))


def get_cursor(*, session: Session, model_version_id: int) -> ScoringCursor | None:
    """How far `model_version_id` has scored the unlabelled records."""
    return session.get(ScoringCursor, model_version_id)


def advance_cursor(
    *, session: Session, model_version_id: int, last_record_id: Any, scored: int
) -> None:
    """Move the scoring cursor of a version forward by `scored` records."""
    cursor = session.get(ScoringCursor, model_version_id)
    if cursor is None:
        cursor = ScoringCursor(model_version_id=model_version_id, scored=0)
        session.add(cursor)
    cursor.last_record_id = {"id": last_record_id}
    cursor.scored = (cursor.scored or 0) + scored
    cursor.updated_at = utcnow()
    session.flush()


def flagged_rows(*, session: Session, limit: int = 20) -> list[dict[str, Any]]:
    """The top rows of the `anomdet_flagged` view, highest score first."""
    view = sa.table(FLAGGED_VIEW, sa.column("score"))
    query = sa.select(sa.text("*")).select_from(view).order_by(view.c.score.desc()).limit(limit)
    return [dict(row._mapping) for row in session.execute(query)]


def flagged_view_select(records: sa.Table, mapping: RecordsMapping) -> sa.Select:
    """The query behind `anomdet_flagged`: current-champion flags joined with record text."""
    flags, versions = Flag.__table__, ModelVersion.__table__
    record_id = sa.cast(records.c[mapping.id_column], sa.String(255))
    return (
        sa.select(
            flags.c.record_id, records.c[mapping.text_column].label("text"),
            flags.c.score, flags.c.threshold, versions.c.model_name,
            versions.c.version.label("model_version"), flags.c.run_id, flags.c.flagged_at,
        )
        .select_from(
            flags.join(versions, versions.c.id == flags.c.model_version_id)
            .join(records, record_id == flags.c.record_id)
        )
        .where(versions.c.status == sa.literal_column("'champion'"))
    )


def ensure_flagged_view(connection: Connection, records: sa.Table, mapping: RecordsMapping) -> None:
    """(Re)create the `anomdet_flagged` view for the configured records table.

    It is made here rather than in a migration because it joins the user's table,
    whose name and columns come from configuration. Names are quoted by SQLAlchemy.
    """
    body = flagged_view_select(records, mapping).compile(
        dialect=connection.dialect, compile_kwargs={"literal_binds": True}
    )
    connection.execute(sa.text(f"DROP VIEW IF EXISTS {FLAGGED_VIEW}"))
    connection.execute(sa.text(f"CREATE VIEW {FLAGGED_VIEW} AS {body}"))


def when(value: datetime | None) -> str:
    """A timestamp for people: minutes precision, or a dash."""
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"
