"""The commands that show what the models did and change which one serves: status,
flagged, models, queue, rollback. None of them loads a model or starts a flow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from cli.common import cell, fail, out, read_settings, when
from cli.runtime import prefect_environment

if TYPE_CHECKING:
    import sqlalchemy as sa


def _database(*, writes: bool = False) -> tuple[Any, sa.Engine]:
    """Settings and the engine of a command that reads (`status`, `models`, `flagged`,
    `queue`), or with `writes` changes (`rollback`), anomdet's tables. Neither creates the
    database or its tables: a database without them ends the command with what to do.
    Tables of an older schema are migrated for a command that writes, refused by one
    that reads."""
    from db.engine import migrate

    settings = read_settings()
    engine = settings.engine()
    problem = _schema_problem(engine, settings, writes=writes)
    if problem == "older":
        migrate(engine)
    elif problem:
        fail(problem)
    return settings, engine


def _schema_problem(engine: sa.Engine, settings: Any, *, writes: bool) -> str | None:
    """Why anomdet's tables cannot be used in this database ("older": a migration would
    make them usable), or None when they can."""
    from db.engine import NoDatabaseFile, describe_database, head_revision, schema_revision

    only = ("this command changes only anomdet's own tables" if writes
            else "this command only reads")
    start = ("point ANOMDET_DATABASE_URL at anomdet's database, or start one there with "
             "`anomdet import-csv` or `anomdet demo`")
    try:
        revision = schema_revision(engine)
    except NoDatabaseFile as missing:
        if not missing.path.parent.is_dir():
            return (f"cannot open SQLite database {missing.path}: the folder "
                    f"{missing.path.parent} does not exist; create it or fix "
                    "ANOMDET_DATABASE_URL")
        return f"SQLite database {missing.path} does not exist, and {only}; {start}"
    where = describe_database(settings.database_url)
    if revision is None:
        return f"{where} holds no anomdet tables, and {only}; {start}"
    head = head_revision()
    if revision == head:
        return None
    if writes:
        return "older"
    return (f"{where} holds anomdet tables of schema revision {revision}, not this "
            f"anomdet's {head}, and {only}; `anomdet retrain` or `anomdet score` migrates "
            "them (or `alembic upgrade head`)")


def status(runs: int = typer.Option(5, min=1, help="how many recent runs to show")) -> None:
    """The champion and the latest runs with their decisions."""
    prefect_environment()
    from db.service import champion_and_runs

    settings, engine = _database()
    champion, recent = champion_and_runs(engine, settings.model_name, runs)
    if champion:
        f1 = champion.metrics.get("f1")
        out.print(f"champion: {settings.model_name} version {champion.version} "
                  f"(f1 {f1:.4f}, threshold {champion.threshold:.4f}, "
                  f"promoted {when(champion.promoted_at)})", highlight=False)
    else:
        out.print(f"champion: none yet for {settings.model_name!r}")
    table = Table(title="recent runs")
    for col in ("run", "started", "state", "decision", "reason"):
        table.add_column(col)
    for run in recent:
        gone = _process_gone(run)
        table.add_row(str(run.id), when(run.started_at),
                      cell(f"{run.state} (process gone)" if gone else run.state),
                      cell(run.decision or "-"), cell(gone or run.reason, 120))
    out.print(table)


def _process_gone(run: Any) -> str | None:
    """What to say of a `running` run whose process has ended without recording how (it
    was killed), or None. Only a process of this host can be looked for."""
    import socket

    process = (run.details or {}).get("process") or {}
    pid, host = process.get("pid"), process.get("host")
    if run.state != "running" or not pid or host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return (f"its process {pid} on {host} ended without recording an outcome (killed?); "
                "the next retrain closes it as failed")
    except PermissionError:  # alive, another user's
        return None
    return None


def flagged(limit: int = typer.Option(20, min=1, help="rows to show")) -> None:
    """The champion's flagged records with their text (the anomdet_flagged view)."""
    prefect_environment()
    from db.service import FLAGGED_QUERY, FlaggedViewMissing, champion_flags

    settings, engine = _database()
    try:
        champion, rows = champion_flags(engine, settings.model_name,
                                        settings.records.mapping(), limit)
    except FlaggedViewMissing as missing:
        fail(f"anomdet_flagged cannot be read: {missing.reason}" if missing.reason else
             "anomdet_flagged does not exist yet; run `anomdet retrain` first")
    if champion is None:
        out.print(f"no champion of {settings.model_name!r} yet: nothing is flagged until "
                  "`anomdet retrain` promotes one", soft_wrap=True, highlight=False)
        return
    table = Table(title=FLAGGED_QUERY)
    for col in ("record_id", "score", "version", "text"):
        table.add_column(col)
    for row in rows:
        table.add_row(cell(row["record_id"]), f"{row['score']:.4f}",
                      str(row["model_version"]), cell(row["text"], 100))
    out.print(table)


def models() -> None:
    """Every model version with its status, test metrics, production precision of its
    reviewed flags, and promotion/retirement times."""
    prefect_environment()
    from db.service import QUALITY_QUERY, versions_and_quality

    settings, engine = _database()
    versions, quality = versions_and_quality(engine, settings.model_name,
                                             settings.records.mapping())
    table = Table(title=f"versions of {settings.model_name}")
    for col in ("version", "status", "f1", "pr_auc", "threshold", "flags", "reviewed",
                "precision (95% CI)", "base model", "created", "promoted", "retired"):
        table.add_column(col)
    for v in versions:
        row = quality.get(v.version)
        table.add_row(str(v.version), v.status, f"{v.metrics.get('f1', float('nan')):.4f}",
                      f"{v.metrics.get('pr_auc', float('nan')):.4f}", f"{v.threshold:.4f}",
                      str(row["flags"]) if row else "-", _reviewed(row), _precision(row),
                      cell(v.base_model), when(v.created_at), when(v.promoted_at),
                      when(v.retired_at))
    out.print(table if versions else f"no versions of {settings.model_name!r} yet")
    if quality:
        out.print("precision: of the flags reviewers labelled since (label 1 confirms a flag, "
                  f"0 dismisses it); {QUALITY_QUERY}", highlight=False,
                  markup=False, soft_wrap=True)


def _reviewed(row: dict[str, Any] | None) -> str:
    if not row or not row["flags"]:
        return "-"
    return f"{row['reviewed']} ({row['reviewed_share']:.0%})"


def _precision(row: dict[str, Any] | None) -> str:
    if not row or row["precision"] is None:
        return "-"
    return (f"{row['precision']:.3f} [{row['precision_low']:.3f}, "
            f"{row['precision_high']:.3f}]")


def queue(limit: int = typer.Option(20, min=1, help="rows to show")) -> None:
    """The unlabelled records to label next (the anomdet_label_queue view): those the
    champion is least sure of, and a sample of its high scores across distinct texts."""
    prefect_environment()
    from db.service import QUEUE_QUERY, champion_label_queue, verdict_sql

    settings, engine = _database()
    mapping = settings.records.mapping()
    try:
        rows = champion_label_queue(engine, settings.model_name, mapping,
                                    settings.review.queue_sample_every, limit)
    except ValueError as exc:
        fail(str(exc))
    if rows is None:
        out.print(f"no champion of {settings.model_name!r} yet: the queue is made of its "
                  "scores, so it fills once `anomdet retrain` promotes one",
                  soft_wrap=True, highlight=False)
        return
    table = Table(title=QUEUE_QUERY)
    for col in ("rank", "record_id", "score", "threshold", "version", "reason", "copies",
                "text"):
        table.add_column(col)
    for row in rows:
        table.add_row(str(row["rank"]), cell(row["record_id"]), f"{row['score']:.4f}",
                      f"{row['threshold']:.4f}", str(row["model_version"]),
                      cell(row["reason"]), str(row["copies"]), cell(row["text"], 80))
    out.print(table if rows else "the queue is empty: no unlabelled record holds a score of "
              "the champion (`anomdet score` scores new records)")
    out.print(f"record a verdict: {verdict_sql(mapping)}", markup=False, highlight=False,
              soft_wrap=True)


def rollback(
    version: int = typer.Argument(..., help="the version to make champion again"),
    reason: str = typer.Option(..., help="why, in words; recorded in anomdet_runs"),
) -> None:
    """Make an earlier version champion again; anomdet_flagged follows it."""
    prefect_environment()
    from anomdet.artifact import verify_artifact
    from db.repository import ChampionChanged
    from db.service import roll_back

    settings, engine = _database(writes=True)
    try:
        # The artifact is checked inside the transaction: a version whose files are
        # gone or altered never becomes champion.
        done = roll_back(engine, settings.model_name, version, reason,
                         verify=lambda v: verify_artifact(Path(v.artifact_uri), v.weights_sha256))
    except (ValueError, ChampionChanged) as exc:
        fail(str(exc))
    _emit_rolled_back(settings.model_name, done.version, done.previous_version, reason,
                      done.run_id)
    out.print(f"version {done.version} is champion again (recorded as run {done.run_id}). "
              "Run `anomdet score` to flag records it has not scored yet.")


def _emit_rolled_back(model_name: str, version: int, previous: int | None, reason: str,
                      run_id: int) -> None:
    """Tell a Prefect server about the rollback (its triggers may score, notify)."""
    from prefect.settings import PREFECT_API_URL

    # Without a configured server Prefect would start a temporary one for this event
    # alone: tens of seconds for an event no automation can see, so none is sent.
    if not PREFECT_API_URL.value():
        return
    from prefect.events.worker import EventsWorker

    from tasks.events import emit_rolled_back

    emit_rolled_back(model_name, version, previous_version=previous, reason=reason,
                     run_id=run_id)
    # Sent before the command returns, not at interpreter exit.
    EventsWorker.instance().drain()
