"""The migrations and the models describe one schema, on SQLite and PostgreSQL, and every
way into the database (the commands, the `alembic` command line) leaves that schema."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from typer.testing import CliRunner

from db import repository as repo
from db.engine import MIGRATION_OPTIONS, get_engine, migrate, migrations_dir
from db.models import Base
from db.records import ensure_records_table
from tests.configs import records_mapping

ROOT = Path(__file__).resolve().parents[2]
HEAD = ScriptDirectory(str(migrations_dir())).get_current_head()


def _differences(engine: sa.Engine, metadata: sa.MetaData = Base.metadata,
                 options: dict[str, object] = MIGRATION_OPTIONS) -> list[object]:
    """What `alembic revision --autogenerate` would write for this database."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts=dict(options))
        return compare_metadata(context, metadata)


def _revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_the_models_are_what_the_migrations_build(db_url: str) -> None:
    engine = get_engine(db_url)
    migrate(engine)
    # The user's table and the view share the database; neither is anomdet's to migrate.
    mapping = records_mapping()
    table = ensure_records_table(engine, mapping)
    with engine.begin() as conn:
        repo.ensure_flagged_view(conn, table, mapping)
    assert _revision(engine) == HEAD
    assert _differences(engine) == []


def test_the_comparison_finds_what_the_migrations_lack(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    migrate(engine)
    ensure_records_table(engine, records_mapping())
    wider = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(wider)
    wider.tables["anomdet_runs"].append_column(sa.Column("notes", sa.Text))
    [added] = _differences(engine, wider)
    assert added[0] == "add_column" and added[2:4] == ("anomdet_runs", wider.tables[
        "anomdet_runs"].c.notes)
    # Without the filter of owned tables, a revision would drop the user's records.
    unfiltered = _differences(engine, options={"render_as_batch": True})
    assert [d[0] for d in unfiltered] == ["remove_table"]
    assert unfiltered[0][1].name == "records"


def _alembic(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANOMDET_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "alembic", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_alembic_command_line_works_from_the_repository_root(db_url: str) -> None:
    assert (ROOT / "alembic.ini").is_file()
    upgrade = _alembic("upgrade", "head", url=db_url)
    assert upgrade.returncode == 0, upgrade.stderr
    engine = get_engine(db_url)
    assert _revision(engine) == HEAD
    # `alembic check` runs autogenerate through env.py: nothing to write.
    check = _alembic("check", url=db_url)
    assert check.returncode == 0, check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    assert _differences(engine) == []


def test_alembic_command_line_refuses_a_bad_setting_in_one_line(sqlite_url: str) -> None:
    env = {**os.environ, "ANOMDET_DATABASE_URL": sqlite_url, "ANOMDET_TRAINNG__EPOCHS": "2"}
    result = subprocess.run([sys.executable, "-m", "alembic", "current"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "ANOMDET_TRAINNG__EPOCHS" in result.stderr and "Traceback" not in result.stderr


def _upgrade_without_a_connection(config_url: str | None) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if config_url:
        config.set_main_option("sqlalchemy.url", config_url)
    command.upgrade(config, "head")


def test_migrations_take_the_url_of_their_config_else_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No alembic.ini here, so no settings: the environment reads the URL itself.
    named, from_environment = (f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db"))
    monkeypatch.setenv("ANOMDET_DATABASE_URL", from_environment)
    _upgrade_without_a_connection(named)
    assert _revision(get_engine(named)) == HEAD
    assert not (tmp_path / "b.db").exists()
    _upgrade_without_a_connection(None)
    assert _revision(get_engine(from_environment)) == HEAD


COMMANDS = [["status"], ["flagged"], ["models"], ["queue"], ["rollback", "1", "--reason", "test"],
            ["import-csv", "records.csv"]]
# None of these creates anomdet's tables; rollback has nothing to roll back without them.
NEVER_CREATE = {"status", "flagged", "models", "queue", "rollback"}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_every_command_leaves_the_migrated_schema_or_none(db_url: str, command: list[str],
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from cli.app import app

    csv = tmp_path / "records.csv"
    csv.write_text("id,text,label\n1,a first record,0\n")
    monkeypatch.setenv("ANOMDET_DATABASE_URL", db_url)
    if db_url.startswith("sqlite"):  # the file exists, empty, as a new PostgreSQL database does
        sqlite3.connect(sa.engine.make_url(db_url).database).close()
    CliRunner().invoke(app, [str(csv) if arg == csv.name else arg for arg in command])
    engine = get_engine(db_url)
    if command[0] in NEVER_CREATE:
        assert sa.inspect(engine).get_table_names() == []
        return
    assert _revision(engine) == HEAD
    assert _differences(engine) == []


def test_flagged_before_any_champion_says_there_is_none_yet(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.app import app

    monkeypatch.setenv("ANOMDET_DATABASE_URL", db_url)
    migrate(get_engine(db_url))
    result = CliRunner().invoke(app, ["flagged"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == ("no champion of 'anomdet' yet: nothing is flagged "
                                      "until `anomdet retrain` promotes one")


def _migrate_after(url: str, barrier: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    migrate(get_engine(url))


def test_first_runs_racing_on_a_new_database_all_migrate(db_url: str) -> None:
    # Each process is a run that finds no tables yet: without the lock, the losers
    # failed with "table ... already exists" on SQLite.
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    racers = [context.Process(target=_migrate_after, args=(db_url, barrier)) for _ in range(4)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=120)
    assert [racer.exitcode for racer in racers] == [0, 0, 0, 0]
    assert _revision(get_engine(db_url)) == HEAD


def test_a_connection_waits_while_another_writes_in_rollback_mode(sqlite_url: str) -> None:
    # Switching to WAL while another connection holds a rollback-journal write lock
    # fails at once in SQLite, busy timeout or not: a run starting then, as one of
    # several first runs or beside another application writing, must wait instead.
    import threading

    path = sa.engine.make_url(sqlite_url).database
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE theirs (x INTEGER)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO theirs VALUES (1)")
    release = threading.Timer(0.5, writer.execute, args=("COMMIT",))
    release.start()
    try:
        with get_engine(sqlite_url).connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    finally:
        release.join()
        writer.close()
    assert mode == "wal"


def test_threads_of_one_process_migrating_at_once_all_succeed(db_url: str) -> None:
    # Alembic's running context is a module global: unserialised, one thread's
    # migration ended with KeyError: 'config' when another's finished.
    import threading

    barrier, errors = threading.Barrier(4), []

    def run() -> None:
        barrier.wait()
        try:
            migrate(get_engine(db_url))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert _revision(get_engine(db_url)) == HEAD


def test_runs_creating_the_views_at_once_on_a_new_database_all_succeed(db_url: str) -> None:
    # Each run looks for the view, then creates it. Here the first to look waits (up to
    # a second) for the other to look too: unserialised, both found no view and the
    # second CREATE failed with "view ... already exists" on SQLite. Serialised, the
    # second cannot look until the first has committed, and finds the view made.
    import threading

    engine = get_engine(db_url)
    migrate(engine)
    mapping = records_mapping()
    table = ensure_records_table(engine, mapping)
    looked, errors = threading.Barrier(2, timeout=1), []

    def after_looking(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        if "sqlite_master" in statement or "to_regclass" in statement:
            try:
                looked.wait()
            except threading.BrokenBarrierError:
                pass

    def run() -> None:
        try:
            with engine.begin() as conn:
                repo.ensure_flagged_view(conn, table, mapping)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    sa.event.listen(engine, "after_cursor_execute", after_looking)
    try:
        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        sa.event.remove(engine, "after_cursor_execute", after_looking)
    assert errors == []
    assert repo.FLAGGED_VIEW in sa.inspect(engine).get_view_names()
