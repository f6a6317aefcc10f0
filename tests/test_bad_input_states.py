"""Hostile but fair input, round three, met through the `anomdet` command: record text
that drives the terminal, commands that should only read, keys that collide, records
tables of unusual shapes, lost artifacts, a full disk, and mistyped variables.

Each case checks the one `error:` line (or the output) and that the anomdet tables and
the records are what they were. Processes killed or interrupted mid-run are in
tests/test_bad_input_signals.py.
"""

# ruff: noqa: F811 - the shared fixtures are imported, then requested by name

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from db.engine import get_engine, migrations_dir
from tests.databases import Database, drop_database, new_database
from tests.flows.test_retrain import seed_records
from tests.test_bad_input import (  # noqa: F401 - fixtures requested by name
    assert_unchanged,
    champion_template,
    cli,
    db,
    execute,
    state,
)
from tests.test_bad_input_ops import one_error

pytestmark = pytest.mark.usefixtures("prefect_harness")
READ_ONLY = ["status", "models", "flagged", "queue"]


# --- 1. record text is data, never terminal control -------------------------------------------

HOSTILE = ["\x1b[31mall clear\x1b[0m",
           "see \x1b]8;;http://evil.example/\x1b\\the runbook\x1b]8;;\x1b\\ now",
           "admin\u202egnp.exe"]
SHOWN = ["\\x1b[31mall clear\\x1b[0m",
         "see \\x1b]8;;http://evil.example/\\x1b\\the runbook\\x1b]8;;\\x1b\\ now",
         "admin\\u202egnp.exe"]


def test_control_characters_of_record_text_are_shown_as_escapes(db: Database) -> None:
    seed_records(db.url, pd.DataFrame({"id": [9001, 9002, 9003], "text": HOSTILE,
                                       "label": pd.array([None] * 3, dtype="Int64")}))
    # At threshold 0 every record flags, so each hostile text reaches `flagged`.
    execute(db.url, sa.text("UPDATE anomdet_model_versions SET threshold = 0 "
                            "WHERE status = 'champion'"))
    assert cli("score").exit_code == 0
    before = state(db.url)
    for args in (["flagged", "--limit", "1000"], ["queue", "--limit", "1000"]):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\u202e" not in result.output
        for shown in SHOWN:
            assert shown in result.output, (args, result.output)
    assert_unchanged(before, db.url)


# --- 5. commands that read never write ------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database with nothing in it: a file of no tables, or a new PostgreSQL database."""
    database = new_database(request.param, tmp_path, prefix="anomdet_empty")
    if database.path is not None:
        sa.create_engine(database.url).connect().close()  # the file, empty
    yield database
    drop_database(database)


def _tables(url: str) -> list[str]:
    engine = get_engine(url)
    try:
        return sorted(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("command_name", READ_ONLY)
def test_reading_commands_never_create_anomdet_tables(empty: Database, command_name: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMDET_DATABASE_URL", empty.url)
    content = empty.path.read_bytes() if empty.path else None
    said = one_error(cli(command_name))
    if empty.path is not None:  # not even switched to WAL
        assert empty.path.read_bytes() == content
    url = sa.engine.make_url(empty.url)
    where = (f"SQLite database {url.database}" if empty.backend == "sqlite" else
             f"PostgreSQL database {url.database!r} on {url.host}:{url.port or 5432}")
    assert said == (f"error: {where} holds no anomdet tables, and this command only reads; "
                    "point ANOMDET_DATABASE_URL at anomdet's database, or start one there "
                    "with `anomdet import-csv` or `anomdet demo`"), said
    assert _tables(empty.url) == []


@pytest.mark.parametrize("command_name", READ_ONLY)
def test_reading_commands_never_create_a_sqlite_file(command_name: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "anomdet.db"
    monkeypatch.setenv("ANOMDET_DATABASE_URL", f"sqlite:///{path}")
    said = one_error(cli(command_name))
    assert said == (f"error: SQLite database {path} does not exist, and this command only "
                    "reads; point ANOMDET_DATABASE_URL at anomdet's database, or start one "
                    "there with `anomdet import-csv` or `anomdet demo`"), said
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command_name", READ_ONLY)
def test_reading_commands_never_migrate(empty: Database, command_name: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with get_engine(empty.url).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
    get_engine(empty.url).dispose()
    tables = _tables(empty.url)
    monkeypatch.setenv("ANOMDET_DATABASE_URL", empty.url)
    said = one_error(cli(command_name))
    assert "holds anomdet tables of schema revision 0003, not this anomdet's" in said, said
    assert "`anomdet retrain` or `anomdet score` migrates them" in said
    with get_engine(empty.url).connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0003"
    assert _tables(empty.url) == tables


# --- 12. variables named in their errors ------------------------------------------------------


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("ANOMDET_RECORDS", "nope",
     "error: invalid configuration (ANOMDET_* environment variables): ANOMDET_RECORDS is not "
     "a JSON object: set the records settings one by one, as ANOMDET_RECORDS__TABLE and the "
     "others of ANOMDET_RECORDS__*, or unset ANOMDET_RECORDS"),
    ("ANOMDET_FOO", "1",
     "error: invalid configuration (ANOMDET_* environment variables): unknown variable "
     "ANOMDET_FOO (no setting has a similar name); rename or unset it (the settings are "
     "listed in anomdet/settings.py)"),
    ("ANOMDET_DRIFT__MAX_LENGHT_KS", "1",
     "error: invalid configuration (ANOMDET_* environment variables): unknown variable "
     "ANOMDET_DRIFT__MAX_LENGHT_KS (did you mean ANOMDET_DRIFT__MAX_LENGTH_KS?); rename or unset it "
     "(the settings are listed in anomdet/settings.py)"),
])
@pytest.mark.parametrize("command_name", ["status", "retrain"])
def test_a_variable_in_error_is_named(db: Database, variable: str, value: str, message: str,
                                      command_name: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    before = state(db.url)
    assert one_error(cli(command_name)) == message
    assert_unchanged(before, db.url)
