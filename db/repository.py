"""Repository functions: a keyword-only `session` in, typed rows out.

Every function here runs inside the caller's transaction; callers decide what
commits together (see `db.engine.session_scope`).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from db.engine import lock_sqlite_writes, session_scope
from db.models import (
    RUN_DECISIONS,
    Flag,
    ModelVersion,
    PendingPromotion,
    Run,
    Score,
    ScoreRow,
    utcnow,
)
from db.records import RecordsMapping, key_matches, plain, text_hash, text_unchanged

logger = logging.getLogger(__name__)

FLAGGED_VIEW = "anomdet_flagged"


def json_safe(value: Any) -> Any:
    """NaN and infinities as null, numpy scalars as Python numbers: PostgreSQL's JSON
    rejects NaN, and a metric that could not be computed is honestly 'no value'."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    value = plain(value)
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


def version_of_run(*, session: Session, model_name: str, run_id: int) -> ModelVersion | None:
    """The version that run `run_id` promoted, if it promoted one."""
    query = sa.select(ModelVersion).where(
        ModelVersion.model_name == model_name, ModelVersion.run_id == run_id
    )
    return session.scalars(query).one_or_none()


def get_version_by_id(*, session: Session, version_id: int) -> ModelVersion | None:
    """One version by its id, whatever its model and status."""
    return session.get(ModelVersion, version_id)


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


@dataclass(frozen=True)
class RunProgress:
    """What a running run has learnt so far. A field left None is not written, so each
    step records only its own findings; `details` adds to what earlier steps recorded."""

    data_fingerprint: str | None = None
    validation: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    test_rows: int | None = None
    champion_version_id: int | None = None
    challenger_metrics: dict[str, Any] | None = None
    champion_metrics: dict[str, Any] | None = None
    baseline_metrics: dict[str, Any] | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunEnding:
    """How a run ended: its final state, its decision and the reason in words."""

    state: Literal["completed", "failed"]
    decision: str
    reason: str
    challenger_version_id: int | None = None  # the version a promotion made

    def __post_init__(self) -> None:
        if self.state not in ("completed", "failed"):
            raise ValueError(f"a run ends completed or failed, not {self.state!r}")
        if self.decision not in RUN_DECISIONS:
            raise ValueError(f"unknown run decision {self.decision!r}; "
                             f"use one of {', '.join(RUN_DECISIONS)}")


def record_progress(*, session: Session, run_id: int, progress: RunProgress) -> Run:
    """Write what a running run has learnt; it stays `running`."""
    found = {f.name: getattr(progress, f.name) for f in fields(progress)}
    return update_run(session=session, run_id=run_id,
                      **{name: value for name, value in found.items() if value is not None})


def end_run(*, session: Session, run_id: int, ending: RunEnding) -> Run:
    """Close a running run with how it ended."""
    extra = ({} if ending.challenger_version_id is None
             else {"challenger_version_id": ending.challenger_version_id})
    return finish_run(session=session, run_id=run_id, state=ending.state,
                      decision=ending.decision, reason=ending.reason, **extra)


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


class OpenedRun(NamedTuple):
    """A run just recorded, and the abandoned runs closed before it (see
    `close_abandoned_runs`)."""

    run_id: int
    closed: list[int]


def open_run(
    *, session: Session, model_name: str, flow_run_id: str | None,
    parameters: dict[str, Any] | None, host: str, pid: int, is_alive: Callable[[int], bool],
) -> OpenedRun:
    """Close this host's runs of `model_name` whose process is gone, then record a new
    run of process `pid` on `host`, in the caller's transaction."""
    closed = close_abandoned_runs(session=session, model_name=model_name, host=host,
                                  is_alive=is_alive)
    run = start_run(session=session, model_name=model_name, flow_run_id=flow_run_id,
                    parameters=parameters, process={"host": host, "pid": pid})
    return OpenedRun(run.id, closed)


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


def running_retrain(*, session: Session, model_name: str, started_after: datetime) -> int | None:
    """The id of a retraining run of `model_name` whose row reads `running` and that
    started after `started_after`, if there is one.

    The bound is the caller's: a row left `running` by a process that died is not a run
    under way, and past the run timeout it no longer counts as one.
    """
    query = sa.select(Run.id).where(Run.model_name == model_name, Run.kind == "retrain",
                                    Run.state == "running", Run.started_at >= started_after)
    return session.scalar(query.limit(1))


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


def register_candidate(*, session: Session, model_name: str,
                       **version_fields: Any) -> ModelVersion:
    """Insert a version as `candidate`, the first phase of a promotion, with the next
    version number of `model_name`.

    Nothing users read shows a candidate: its scores and flags are backfilled while the
    champion stays in service, and `flip_champion` then makes it champion in one short
    transaction, or `discard_candidate` removes it.
    """
    fields = {k: json_safe(v) if isinstance(v, dict) else v for k, v in version_fields.items()}
    number = next_version_number(session=session, model_name=model_name)
    version = ModelVersion(status="candidate", created_at=utcnow(), model_name=model_name,
                           version=number, **fields)
    session.add(version)
    try:
        session.flush()
    except IntegrityError as exc:
        raise VersionNumberTaken(f"version {number} of {model_name!r} was registered by a "
                                 "concurrent run") from exc
    return version


class VersionNumberTaken(RuntimeError):
    """A concurrent run registered the same version number first: register again."""


#: How many times `register_run_candidate` numbers a version before it gives up.
REGISTER_ATTEMPTS = 10


def register_run_candidate(
    sessions: Callable[[], AbstractContextManager[Session]], *, model_name: str,
    run_id: int | None = None, **version_fields: Any,
) -> ModelVersion:
    """Register run `run_id`'s challenger as a `candidate` (see `register_candidate`), or
    return the version that run registered already.

    Each try runs in a transaction of its own, taken from `sessions`: one that lost its
    version number to a concurrent run (`VersionNumberTaken`) tries again in a new one,
    which sees the other run's number. A retry of a try whose insert went through but
    whose answer was lost finds its version by the run id, so a run never registers
    two versions.
    """
    for _ in range(REGISTER_ATTEMPTS):
        try:
            with sessions() as session:
                done = run_id is not None and version_of_run(
                    session=session, model_name=model_name, run_id=run_id)
                if done:
                    return done
                return register_candidate(session=session, model_name=model_name,
                                          run_id=run_id, **version_fields)
        except VersionNumberTaken:
            continue
    raise VersionNumberTaken(f"could not number a new version of {model_name!r}: other runs "
                             "kept registering versions at the same time")


def pending_candidate(*, session: Session, model_name: str) -> ModelVersion | None:
    """The newest candidate of `model_name`: a promotion whose backfill did not finish."""
    query = (sa.select(ModelVersion)
             .where(ModelVersion.model_name == model_name, ModelVersion.status == "candidate")
             .order_by(ModelVersion.id.desc()).limit(1))
    return session.scalars(query).first()


def pending_promotion(*, session: Session, model_name: str) -> PendingPromotion | None:
    """The newest candidate of `model_name` (see `pending_candidate`) with what its run's
    row holds of what that run saw and decided."""
    version = pending_candidate(session=session, model_name=model_name)
    if version is None:
        return None
    run = session.get(Run, version.run_id) if version.run_id is not None else None
    return PendingPromotion(
        version_id=version.id, version=version.version, run_id=version.run_id,
        run_state=run.state if run else None,
        run_started_at=run.started_at if run else None,
        data_fingerprint=run.data_fingerprint if run else None,
        expected_champion_id=run.champion_version_id if run else None,
        threshold=version.threshold, artifact_uri=version.artifact_uri,
        challenger_metrics=version.metrics,
        champion_metrics=run.champion_metrics if run else None,
        baseline_metrics=run.baseline_metrics if run else None,
        details=dict(run.details or {}) if run else {})


def flip_champion(
    *, session: Session, candidate_id: int, expected_champion_id: int | None
) -> ModelVersion:
    """The second phase of a promotion, by compare-and-set: retire the champion the run
    evaluated against and make the candidate champion.

    Two updates of one row each, in the caller's transaction: its length does not depend
    on the number of records. Raises `ChampionChanged` when the champion moved, or when
    the candidate is no longer one (another run flipped or discarded it).
    """
    candidate = session.get(ModelVersion, candidate_id)
    model_name = candidate.model_name if candidate else "?"
    _retire_expected_champion(session, model_name, expected_champion_id)
    try:
        flipped = session.execute(
            sa.update(ModelVersion)
            .where(ModelVersion.id == candidate_id, ModelVersion.status == "candidate")
            .values(status="champion", promoted_at=utcnow())
            .execution_options(synchronize_session="fetch"))
    except IntegrityError as exc:
        # The partial unique index caught a champion made by a concurrent run.
        raise ChampionChanged(f"another champion of {model_name!r} was promoted meanwhile") from exc
    if flipped.rowcount != 1:
        raise ChampionChanged(f"version id {candidate_id} of {model_name!r} is no longer a "
                              "candidate: another run promoted or discarded it")
    session.refresh(candidate)
    return candidate


def discard_candidate(*, session: Session, candidate_id: int) -> ModelVersion | None:
    """Mark a candidate `rejected` and delete its scores and flags; the discarded version
    (its artifact folder is the caller's to remove). None (and nothing done) when it is no
    longer a candidate: a version in service is never discarded."""
    result = session.execute(
        sa.update(ModelVersion)
        .where(ModelVersion.id == candidate_id, ModelVersion.status == "candidate")
        .values(status="rejected", retired_at=utcnow())
        .execution_options(synchronize_session="fetch"))
    if result.rowcount != 1:
        return None
    for table in (Flag, Score):
        session.execute(sa.delete(table).where(table.model_version_id == candidate_id))
    return get_version_by_id(session=session, version_id=candidate_id)


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
    if target.status != "retired":
        raise ValueError(f"version {version} of {model_name!r} is {target.status}: it never "
                         "served, so it cannot serve again; roll back to a retired version")
    _retire_expected_champion(session, model_name, expected_champion_id)
    session.flush()
    target.status = "champion"
    target.promoted_at = utcnow()
    target.retired_at = None
    session.flush()
    return target


# Version numbers are 32-bit integers in the database.
_MAX_VERSION = 2**31 - 1


def rollback_champion(
    *, session: Session, model_name: str, version: int, reason: str,
    verify: Callable[[ModelVersion], object] | None = None,
) -> tuple[ModelVersion, Run]:
    """Make `version` champion again and record it in anomdet_runs like a decision.

    `verify` is called with the target version before anything is written; it raises
    (ValueError) when the version's artifact is missing or altered, which refuses it.
    """
    if not reason.strip():
        raise ValueError("a rollback needs a reason in words (--reason)")
    if not 1 <= version <= _MAX_VERSION:
        known = [v.version for v in list_versions(session=session, model_name=model_name)]
        raise ValueError(f"{model_name!r} has no version {version}; versions: {known or 'none'}")
    target = get_version(session=session, model_name=model_name, version=version)
    # Only a retired version can serve again (see set_champion, which says why not):
    # the files of one that never served may be gone by design.
    if target is not None and target.status == "retired" and verify is not None:
        try:
            verify(target)
        except ValueError as exc:
            raise ValueError(f"cannot roll back to version {version}: {exc}") from exc
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
    batch_size: int = 20_000, replace: bool = False,
) -> int:
    """Bulk-insert flag rows; a (record, version) pair that exists already is skipped,
    or with `replace` updated to the new row (a record scored again for a new text).

    Returns how many rows were really written. One prepared statement per batch,
    never one ORM object per row; reruns add nothing twice.
    """
    if not rows:
        return 0
    now = utcnow()
    payload = [
        (str(r["record_id"]), model_version_id, float(r["score"]), float(r["threshold"]),
         r.get("run_id"), r.get("text_hash"), r.get("flagged_at", now))
        for r in rows
    ]
    postgres = session.get_bind().dialect.name == "postgresql"
    statement = (_PG_INSERT_FLAGS if postgres else _SQLITE_INSERT_FLAGS)[replace]
    write = _insert_flags_postgres if postgres else _insert_flags_sqlite
    return sum(write(session, statement, payload[i : i + batch_size])
               for i in range(0, len(payload), batch_size))


# Flag rows travel as tuples in this order; the time comes last (see the SQLite writer).
_FLAG_COLUMNS = ("record_id", "model_version_id", "score", "threshold", "run_id", "text_hash",
                 "flagged_at")
# A flag given again (a record scored anew) is for the record's current text.
_FLAG_UPDATE = (", ".join(f"{c} = excluded.{c}" for c in _FLAG_COLUMNS[2:])
                + ", text_changed_at = NULL")
_ON_FLAG = "ON CONFLICT (record_id, model_version_id) DO "
_SQLITE_INSERT_FLAGS = {
    replace: f"INSERT INTO {Flag.__tablename__} ({', '.join(_FLAG_COLUMNS)}) "
             f"VALUES ({', '.join('?' * len(_FLAG_COLUMNS))}) "
             + _ON_FLAG + (f"UPDATE SET {_FLAG_UPDATE}" if replace else "NOTHING")
    for replace in (False, True)
}


def _sqlite_rows(session: Session, column: sa.Column, payload: list[tuple[Any, ...]]
                 ) -> list[tuple[Any, ...]]:
    # Written against the driver: SQLAlchemy's executemany turns every row into
    # processed parameters in Python, which took longer than SQLite's writing itself
    # (about 135k against 310k rows/s here). Plain tuples go straight to sqlite3's
    # executemany; timestamps (last in each row) get SQLAlchemy's own storage format,
    # once per value.
    conn = session.connection()
    to_db = column.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    stamps = {stamp: to_db(stamp) if to_db else stamp for stamp in {row[-1] for row in payload}}
    return [(*row[:-1], stamps[row[-1]]) for row in payload]


def _insert_flags_sqlite(session: Session, statement: str,
                         payload: list[tuple[Any, ...]]) -> int:
    rows = _sqlite_rows(session, Flag.__table__.c.flagged_at, payload)
    return max(0, session.connection().exec_driver_sql(statement, rows).rowcount)


_PG_INSERT_FLAGS = {
    # The rows travel as one array per column and are unnested by the server: one
    # statement and one round trip per batch, whatever its size.
    replace: sa.text(
        "INSERT INTO anomdet_flags (record_id, model_version_id, score, threshold, run_id, "
        "text_hash, flagged_at) SELECT * FROM unnest(CAST(:record_id AS text[]), "
        "CAST(:model_version_id AS integer[]), CAST(:score AS double precision[]), "
        "CAST(:threshold AS double precision[]), CAST(:run_id AS integer[]), "
        "CAST(:text_hash AS varchar[]), CAST(:flagged_at AS timestamptz[])) "
        + _ON_FLAG + (f"UPDATE SET {_FLAG_UPDATE}" if replace else "NOTHING"))
    for replace in (False, True)
}


def _columns(names: Sequence[str], payload: list[tuple[Any, ...]]) -> dict[str, list[Any]]:
    return dict(zip(names, (list(c) for c in zip(*payload, strict=True)), strict=True))


def _insert_flags_postgres(session: Session, statement: sa.TextClause,
                           payload: list[tuple[Any, ...]]) -> int:
    return max(0, session.execute(statement, _columns(_FLAG_COLUMNS, payload)).rowcount)


def write_scores(
    *, session: Session, model_version_id: int, rows: Sequence[ScoreRow], threshold: float,
    run_id: int | None = None, replace: bool = True, batch_size: int = 20_000,
) -> int:
    """Keep `rows` as the version's scores and bring its flags in line with them.

    Scores at or above `threshold` are written as flags. With `replace` (records scored
    again because their text changed), a flag for an earlier text is updated, or removed
    where the new score is below the threshold. Returns the flags written. Bulk, like
    `insert_flags`: one statement per batch.
    """
    if not rows:
        return 0
    now = utcnow()
    payload = [(r.record_id, model_version_id, r.score, r.text_hash, run_id, now) for r in rows]
    postgres = session.get_bind().dialect.name == "postgresql"
    for i in range(0, len(payload), batch_size):
        batch = payload[i : i + batch_size]
        if postgres:
            session.execute(_PG_UPSERT_SCORES, _columns(_SCORE_COLUMNS, batch))
        else:
            rows_db = _sqlite_rows(session, Score.__table__.c.scored_at, batch)
            session.connection().exec_driver_sql(_SQLITE_UPSERT_SCORES, rows_db)
    hits = [{"record_id": r.record_id, "score": r.score, "threshold": threshold,
             "run_id": run_id, "text_hash": r.text_hash, "flagged_at": now}
            for r in rows if r.score is not None and r.score >= threshold]
    if replace:
        _delete_flags(session, model_version_id,
                      [r.record_id for r in rows if r.score is None or r.score < threshold])
    return insert_flags(session=session, model_version_id=model_version_id, rows=hits,
                        batch_size=batch_size, replace=replace)


def keep_scores(engine: Engine, *, model_version_id: int, rows: Sequence[ScoreRow],
                threshold: float, run_id: int | None = None) -> int:
    """`write_scores` in a transaction of its own, committed before it returns: what a
    scoring pass keeps of one chunk stays kept if a later chunk fails, so a pass that
    stops part-way resumes after the last chunk it kept. Returns the flags written."""
    with session_scope(engine) as session:
        return write_scores(session=session, model_version_id=model_version_id, rows=rows,
                            threshold=threshold, run_id=run_id)


_SCORE_COLUMNS = ("record_id", "model_version_id", "score", "text_hash", "run_id", "scored_at")
_SCORE_UPDATE = ("ON CONFLICT (model_version_id, record_id) DO UPDATE SET "
                 + ", ".join(f"{c} = excluded.{c}" for c in _SCORE_COLUMNS[2:]))
_SQLITE_UPSERT_SCORES = (
    f"INSERT INTO {Score.__tablename__} ({', '.join(_SCORE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_SCORE_COLUMNS))}) {_SCORE_UPDATE}"
)
_PG_UPSERT_SCORES = sa.text(
    "INSERT INTO anomdet_scores (record_id, model_version_id, score, text_hash, run_id, "
    "scored_at) SELECT * FROM unnest(CAST(:record_id AS text[]), "
    "CAST(:model_version_id AS integer[]), CAST(:score AS double precision[]), "
    "CAST(:text_hash AS varchar[]), CAST(:run_id AS integer[]), "
    f"CAST(:scored_at AS timestamptz[])) {_SCORE_UPDATE}"
)


def _delete_flags(session: Session, model_version_id: int, record_ids: list[str]) -> None:
    """Remove the version's flags of these records (they scored below the threshold now)."""
    if not record_ids:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("DELETE FROM anomdet_flags WHERE model_version_id = :v "
                                "AND record_id = ANY(CAST(:ids AS text[]))"),
                        {"v": model_version_id, "ids": record_ids})
        return
    session.connection().exec_driver_sql(
        "DELETE FROM anomdet_flags WHERE model_version_id = ? AND record_id = ?",
        [(model_version_id, rid) for rid in record_ids])


def count_flags(*, session: Session, model_version_id: int | None = None) -> int:
    """Flag rows in total, or for one version."""
    query = sa.select(sa.func.count()).select_from(Flag)
    if model_version_id is not None:
        query = query.where(Flag.model_version_id == model_version_id)
    return int(session.scalar(query))


def count_scores(*, session: Session, model_version_id: int | None = None) -> int:
    """Kept score rows in total, or for one version."""
    query = sa.select(sa.func.count()).select_from(Score)
    if model_version_id is not None:
        query = query.where(Score.model_version_id == model_version_id)
    return int(session.scalar(query))


def prune_scores(*, session: Session, model_name: str, keep_versions: int) -> int:
    """Delete the kept scores of `model_name`'s older versions; returns the rows deleted.

    Kept: the champion's and those of the `keep_versions` newest other versions (the
    likely targets of a rollback). Flags stay: they are the history users query.
    """
    versions = list_versions(session=session, model_name=model_name)
    others = [v.id for v in versions if v.status != "champion"]
    drop = others[keep_versions:]
    if not drop:
        return 0
    result = session.execute(sa.delete(Score).where(Score.model_version_id.in_(drop)))
    return max(0, result.rowcount)


def retire_changed_flags(*, session: Session, records: sa.Table,
                         mapping: RecordsMapping) -> tuple[int, int]:
    """Mark the flags whose record's text no longer hashes as it did when flagged, and
    unmark those whose text is back; returns (marked, unmarked).

    The views hide marked flags. A scoring run calls this first, then scores the changed
    texts, which writes their flags anew: so on SQLite, whose views cannot hash a text,
    an edited record keeps its old flag in `anomdet_flagged` only until the next scoring
    run. Records that were deleted are left alone: the views' joins drop them.
    """
    flags = Flag.__table__
    dialect = session.get_bind().dialect
    found = key_matches(records, mapping, flags.c.record_id, dialect)
    current = text_hash(records.c[mapping.text_column])
    changed = sa.exists().where(found, current.is_distinct_from(flags.c.text_hash))
    back = sa.exists().where(found, current == flags.c.text_hash)
    marked = session.execute(sa.update(flags).where(flags.c.text_changed_at.is_(None), changed)
                             .values(text_changed_at=utcnow())).rowcount
    unmarked = session.execute(sa.update(flags).where(flags.c.text_changed_at.is_not(None), back)
                               .values(text_changed_at=None)).rowcount
    if marked or unmarked:
        logger.info("flags of changed texts: %d marked, %d whose text is back unmarked",
                    marked, unmarked)
    return max(0, marked), max(0, unmarked)


def flagged_rows(*, session: Session, limit: int = 20) -> list[dict[str, Any]]:
    """The top rows of the `anomdet_flagged` view, highest score first."""
    view = sa.table(FLAGGED_VIEW, sa.column("score"))
    query = sa.select(sa.text("*")).select_from(view).order_by(view.c.score.desc()).limit(limit)
    return [dict(row._mapping) for row in session.execute(query)]


def flags_since(*, session: Session, version_id: int, since: datetime,
                limit: int = 20) -> tuple[int | None, list[dict[str, Any]]]:
    """The number of version id `version_id` and the records it flagged since `since`, as
    `anomdet_flagged` shows them, highest score first (at most `limit`). (None, []) when
    there is no such version; none while it is not the champion, since the view shows
    the champion's flags only."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        return None, []
    # Typed columns: SQLAlchemy then binds the time as the flags table stores it.
    view = sa.table(FLAGGED_VIEW, sa.column("model_name", sa.String),
                    sa.column("model_version", sa.Integer), sa.column("score", sa.Float),
                    sa.column("flagged_at", sa.DateTime(timezone=True)))
    query = (sa.select(sa.text("*")).select_from(view)
             .where(view.c.model_name == version.model_name,
                    view.c.model_version == version.version, view.c.flagged_at >= since)
             .order_by(view.c.score.desc()).limit(limit))
    return version.version, [dict(row._mapping) for row in session.execute(query)]


def flagged_view_select(records: sa.Table, mapping: RecordsMapping,
                        dialect: sa.Dialect) -> sa.Select:
    """The query behind `anomdet_flagged`: current-champion flags joined with record text.

    A flag is shown only beside the text it was given for: the record must still exist
    and still be unlabelled, and its flag must not be marked as given for an earlier
    text. A record that was labelled or deleted drops out at once. One whose text was
    edited drops out at once on PostgreSQL, where the view compares the text's md5 with
    the flag's; on SQLite, which has no hash function built in, at the next scoring run,
    which marks the flags of changed texts (`retire_changed_flags`) and scores the new
    texts. Either way the edited text comes back with its own flag once scored.

    Served by indexes: a flag is found by score (`ix_anomdet_flags_score`) or by record
    id (the flags' unique key), its record by the records' own id index (`key_matches`).
    The text check is written as a CASE on purpose: as a plain equality PostgreSQL's
    planner counts it as a second join key, expects one row from the join, and then
    reads every flag and record to sort them instead of walking the score index.
    """
    flags, versions = Flag.__table__, ModelVersion.__table__
    text = records.c[mapping.text_column]
    same_text = text_unchanged(flags.c.text_hash, text, dialect)
    return (
        sa.select(
            flags.c.record_id, text.label("text"),
            flags.c.score, flags.c.threshold, versions.c.model_name,
            versions.c.version.label("model_version"), flags.c.run_id, flags.c.flagged_at,
        )
        .select_from(
            flags.join(versions, versions.c.id == flags.c.model_version_id)
            .join(records, key_matches(records, mapping, flags.c.record_id, dialect))
        )
        .where(versions.c.status == sa.literal_column("'champion'"),
               records.c[mapping.label_column].is_(None), flags.c.text_hash.is_not(None),
               flags.c.text_changed_at.is_(None), same_text)
    )


def ensure_flagged_view(connection: Connection, records: sa.Table, mapping: RecordsMapping) -> None:
    """Create the `anomdet_flagged` view for the configured records table, or replace it
    when (and only when) its definition changed (see `ensure_view`)."""
    ensure_view(connection, FLAGGED_VIEW, flagged_view_select(records, mapping,
                                                              connection.dialect))


def ensure_view(connection: Connection, name: str, query: sa.Select) -> None:
    """Create the view `name` as `query`, or replace it when (and only when) its
    definition changed.

    anomdet's views are made here rather than in a migration because they join the
    user's table, whose name and columns come from configuration. Names are quoted by
    SQLAlchemy; `name` is one of anomdet's own constants. Users grant on the views and
    build their own views on them: an unchanged view is left alone, and PostgreSQL
    replaces a changed one in place (CREATE OR REPLACE), which keeps its grants and the
    views that depend on it.
    """
    body = str(query.compile(dialect=connection.dialect,
                             compile_kwargs={"literal_binds": True}))
    if connection.dialect.name == "postgresql":
        _ensure_view_postgres(connection, name, body)
    else:
        _ensure_view_sqlite(connection, name, body)


def _ensure_view_sqlite(connection: Connection, name: str, body: str) -> None:
    # SQLite keeps the statement that made the view: an identical one needs nothing.
    # It has no CREATE OR REPLACE and no grants, and resolves dependent views lazily.
    create = f"CREATE VIEW {name} AS {body}"
    read = sa.text("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = :name")
    if connection.execute(read, {"name": name}).scalar_one_or_none() == create:
        return  # the usual case: no write lock, so a run never waits on another's writes
    # Two runs starting at once would both find no view and both create it: take the
    # write lock, then look again, since the other run may have made it meanwhile.
    lock_sqlite_writes(connection)
    existing = connection.execute(read, {"name": name}).scalar_one_or_none()
    if existing == create:
        return
    if existing is not None:
        connection.execute(sa.text(f"DROP VIEW {name}"))
    connection.execute(sa.text(create))


def _ensure_view_postgres(connection: Connection, name: str, body: str) -> None:
    # PostgreSQL rewrites a view's text, so the definition is recognised by a digest
    # kept in the view's comment.
    marker = f"anomdet view definition {hashlib.sha256(body.encode()).hexdigest()[:32]}"
    # Two runs starting at once would both replace it: serialise them.
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(815203)"))
    exists, comment = connection.execute(
        sa.text("SELECT to_regclass(:name) IS NOT NULL, "
                "obj_description(to_regclass(:name), 'pg_class')"),
        {"name": name}).one()
    if exists and comment == marker:
        return
    try:
        with connection.begin_nested():
            connection.execute(sa.text(f"CREATE OR REPLACE VIEW {name} AS {body}"))
    except DBAPIError:
        # Columns renamed, dropped or of another type: only a new view will do.
        _recreate_view_postgres(connection, name, body)
    connection.execute(sa.text(f"COMMENT ON VIEW {name} IS '{marker}'"))


def _recreate_view_postgres(connection: Connection, name: str, body: str) -> None:
    try:
        with connection.begin_nested():
            connection.execute(sa.text(f"DROP VIEW IF EXISTS {name}"))
            connection.execute(sa.text(f"CREATE VIEW {name} AS {body}"))
    except DBAPIError as exc:
        raise ValueError(
            f"{name} must change its columns, but other objects depend on it "
            f"({str(exc.orig).splitlines()[0]}); drop your views on {name}, run "
            "again, then re-create them") from exc
