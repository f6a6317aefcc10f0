"""Hostile but fair input, round three, met through the `anomdet` command: record text
that drives the terminal, commands that should only read, keys that collide, records
tables of unusual shapes, lost artifacts, a full disk, and mistyped variables.

Each case checks the one `error:` line (or the output) and that the anomdet tables and
the records are what they were. Processes killed or interrupted mid-run are in
tests/test_bad_input_signals.py.
"""

# ruff: noqa: F811 - the shared fixtures are imported, then requested by name

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from db.engine import get_engine, migrations_dir
from tests.databases import Database, drop_database, new_database
from tests.flows.test_retrain import seed_records, toy_records
from tests.test_bad_input import (  # noqa: F401 - fixtures requested by name
    ROWS,
    SETTINGS_ENV,
    assert_unchanged,
    cli,
    db,
    execute,
    map_records,
    state,
)
from tests.test_bad_input_keys import summary
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
     "ANOMDET_DRIFT__MAX_LENGHT_KS (did you mean ANOMDET_DRIFT__MAX_LENGTH_KS?); rename or "
     "unset it (the settings are listed in anomdet/settings.py)"),
])
@pytest.mark.parametrize("command_name", ["status", "retrain"])
def test_a_variable_in_error_is_named(db: Database, variable: str, value: str, message: str,
                                      command_name: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    before = state(db.url)
    assert one_error(cli(command_name)) == message
    assert_unchanged(before, db.url)


# --- 4. keys that collide once written as text -------------------------------------------------


def test_ids_that_write_as_one_key_are_unkeyed(db: Database,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if db.backend == "postgresql":
        pytest.skip("a PostgreSQL column has a type, whose values write as distinct texts")
    # A column without a declared type keeps 5000 and '5000' apart; both are key '5000'.
    execute(db.url, sa.text("CREATE TABLE events (id, text TEXT, label SMALLINT)"),
            sa.text("INSERT INTO events VALUES (5000, 'the integer five thousand', NULL), "
                    "('5000', 'the text five thousand', NULL), (5001, 'a record', NULL)"))
    map_records(monkeypatch, table="events", timestamp_column="")
    first = summary(cli("score"))
    assert (first["records"], first["scored"], first["unkeyed"]) == (3, 1, 2), first
    assert first["unkeyed_example_ids"] == ["5000", "5000"]
    before = state(db.url)
    again = summary(cli("score"))
    assert (again["records"], again["scored"], again["unkeyed"]) == (2, 0, 2), again
    assert_unchanged(before, db.url)
    with get_engine(db.url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM anomdet_scores "
                                    "WHERE record_id = '5000'")).scalar_one() == 0


# --- 8. a label column of another type ---------------------------------------------------------


@pytest.mark.parametrize("command_name", ["retrain", "score", "queue"])
def test_a_boolean_label_column_is_named(db: Database, command_name: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if db.backend == "sqlite":
        pytest.skip("SQLite keeps a BOOLEAN as the numbers 0 and 1")
    execute(db.url, sa.text("CREATE TABLE events (id bigint PRIMARY KEY, text text, "
                            "label boolean)"),
            sa.text("INSERT INTO events SELECT id, text, label::int::boolean FROM records"))
    map_records(monkeypatch, table="events", timestamp_column="")
    before = state(db.url)
    said = one_error(cli(command_name))
    assert said == (
        "error: label column events.label is BOOLEAN: anomdet reads labels as 0 (normal) and "
        "1 (anomalous) in an integer column; add one (ALTER TABLE events ADD COLUMN label_int "
        "smallint; UPDATE events SET label_int = label::int) and set "
        "ANOMDET_RECORDS__LABEL_COLUMN=label_int"), said
    assert_unchanged(before, db.url)


# --- 9. 10. records tables an import cannot write -----------------------------------------------


def test_an_import_needs_ids_unique_on_their_own(db: Database, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    execute(db.url, sa.text("CREATE TABLE events (tenant INTEGER NOT NULL, id BIGINT NOT NULL, "
                            "text TEXT, label SMALLINT, PRIMARY KEY (tenant, id))"),
            sa.text("INSERT INTO events VALUES (1, 1, 'a first record', 0)"))
    map_records(monkeypatch, table="events", timestamp_column="")
    csv = tmp_path / "records.csv"
    csv.write_text("id,text,label\n1,an edited first record,0\n2,a second record,1\n")
    before = state(db.url)
    said = one_error(cli("import-csv", str(csv)))
    assert said == (
        "error: events.id is not unique on its own (the primary key is (tenant, id)): an "
        "import inserts or updates records by id, which needs a unique constraint on id "
        "alone; add one (CREATE UNIQUE INDEX events_id_key ON events (id)) or load these "
        "rows with your own tools"), said
    assert_unchanged(before, db.url)


def _records_as_view(db: Database) -> None:
    """The records moved into `records_t`, and `records` made a view of them."""
    cascade = " CASCADE" if db.backend == "postgresql" else ""  # anomdet's views go too
    execute(db.url, sa.text("CREATE TABLE records_t AS SELECT * FROM records"),
            sa.text(f"DROP TABLE records{cascade}"),
            sa.text("CREATE VIEW records AS SELECT * FROM records_t"))


def test_records_that_are_a_view_are_read_and_never_written(db: Database,
                                                            tmp_path: Path) -> None:
    _records_as_view(db)
    seed = "INSERT INTO records_t (id, text, label) VALUES (9001, 'a new record', NULL)"
    execute(db.url, sa.text(seed))
    scored = summary(cli("score"))
    assert (scored["records"], scored["scored"]) == (1, 1), scored
    assert cli("flagged").exit_code == 0
    csv = tmp_path / "records.csv"
    csv.write_text("id,text,label\n9002,another record,0\n")
    before = state(db.url)
    for args in (["import-csv", str(csv)], ["demo", "--rows", "100"]):
        said = one_error(cli(*args))
        assert said == (
            "error: records 'records' is a view: anomdet reads records from a view (retrain, "
            "score, flagged work on it) but writes records only into a table; import into "
            "the table behind the view, or set ANOMDET_RECORDS__TABLE to a table"), said
        assert_unchanged(before, db.url)


# --- 11. what is missing, said as it is ----------------------------------------------------------


def test_flagged_without_the_records_table_names_the_table(db: Database) -> None:
    cascade = " CASCADE" if db.backend == "postgresql" else ""  # the view goes with it
    execute(db.url, sa.text(f"DROP TABLE records{cascade}"))
    before = state(db.url)
    said = one_error(cli("flagged"))
    assert said == ("error: anomdet_flagged cannot be read: records table 'records' does not "
                    "exist in the database (tables there: none); create it, import a CSV with "
                    "`anomdet import-csv`, or set ANOMDET_RECORDS__TABLE"), said
    assert_unchanged(before, db.url)


def test_rollback_to_a_version_that_never_served_says_so(db: Database) -> None:
    execute(db.url, sa.text(
        "INSERT INTO anomdet_model_versions (model_name, version, status, base_model, "
        "artifact_uri, weights_sha256, data_fingerprint, hyperparameters, metrics, threshold, "
        "created_at, retired_at) SELECT model_name, 2, 'rejected', base_model, "
        "'/nonexistent/discarded', weights_sha256, data_fingerprint, hyperparameters, metrics, "
        "threshold, created_at, created_at FROM anomdet_model_versions WHERE version = 1"))
    before = state(db.url)
    said = one_error(cli("rollback", "2", "--reason", "the newer one"))
    assert said == ("error: version 2 of 'anomdet' is rejected: it never served, so it cannot "
                    "serve again; roll back to a retired version"), said
    assert_unchanged(before, db.url)


def test_rollback_to_a_negative_version_is_a_usage_error(db: Database) -> None:
    before = state(db.url)
    result = cli("rollback", "-1", "--reason", "typo")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip() == (
        "error: 'anomdet rollback -1': versions are numbered from 1 and -1 reads as an "
        "option; give the number of a retired version (`anomdet models` lists them), as in "
        "`anomdet rollback 1 --reason ...`")
    missing = cli("rollback", "1")
    assert missing.exit_code == 2
    assert missing.output.strip() == ("error: Missing option '--reason'; see "
                                      "`anomdet rollback --help`")
    assert_unchanged(before, db.url)


# --- 6. a champion whose files are gone ----------------------------------------------------------


def _lose_champion_files(db: Database, tmp_path: Path) -> Path:
    """The champion's artifact, copied where this test may delete it, then deleted."""
    with get_engine(db.url).connect() as conn:
        uri = conn.execute(sa.text("SELECT artifact_uri FROM anomdet_model_versions "
                                   "WHERE status = 'champion'")).scalar_one()
    artifact = tmp_path / "lost-champion"
    shutil.copytree(uri, artifact)
    execute(db.url, sa.text("UPDATE anomdet_model_versions SET artifact_uri = :u "
                            "WHERE status = 'champion'").bindparams(u=str(artifact)))
    shutil.rmtree(artifact)
    return artifact


# Files on disk, not rows: SQLite only (the flip that retires v1 runs on both databases in
# tests/flows).
@pytest.mark.parametrize("champion_template", ["sqlite"], indirect=True)
def test_a_champion_whose_files_are_gone_is_replaced_by_a_retrain(db: Database,
                                                                  tmp_path: Path) -> None:
    artifact = _lose_champion_files(db, tmp_path)
    seed_records(db.url, pd.DataFrame({"id": [9001], "text": ["cache 1 refreshed"],
                                       "label": pd.array([None], dtype="Int64")}))
    before = state(db.url)
    said = one_error(cli("score"))
    assert said == (f"error: model artifact folder {artifact} is missing; restore it from a "
                    "backup, roll back to a retired version, or run `anomdet retrain`, which "
                    "replaces a champion whose files are gone"), said
    assert_unchanged(before, db.url)
    # The way the message names works: the challenger is judged as if there were no
    # champion (the first-run policy), and its promotion retires the lost one.
    result = cli("retrain")
    assert result.exit_code == 0, result.output
    assert "decision: promoted" in result.output, result.output
    after = state(db.url)
    assert [v[1:3] for v in after["versions"]] == [(1, "retired"), (2, "champion")]
    with get_engine(db.url).connect() as conn:
        reason = conn.execute(sa.text("SELECT reason FROM anomdet_runs ORDER BY id DESC "
                                      "LIMIT 1")).scalar_one()
    assert reason.startswith(f"Champion v1 could not be evaluated: its artifact folder "
                             f"{artifact} is missing, so the challenger was judged as if "
                             "there were no champion. "), reason
    assert summary(cli("score"))["records"] == 0  # v2 scored 9001 in its backfill


# --- 7. a full disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB file system of its own (tmpfs), where mounting one is allowed (as root)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_while_storing_the_artifact_is_named_and_cleaned(
        small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'anomdet.db'}"
    seed_records(url, toy_records(ROWS))
    for name, value in SETTINGS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ANOMDET_DATABASE_URL", url)
    monkeypatch.setenv("ANOMDET_ARTIFACTS_DIR", str(small_disk))
    # The run writes its Data Docs there too, and must remove them with the rest.
    monkeypatch.setenv("ANOMDET_VALIDATION__DATA_DOCS", "true")
    free = shutil.disk_usage(small_disk).free
    said = one_error(cli("retrain"))
    assert said.startswith(f"error: no space for the model artifact in {small_disk}/anomdet: "
                           "it needs about "), said
    assert said.endswith("; free space there or set ANOMDET_ARTIFACTS_DIR to a folder with "
                         "room, then run again"), said
    assert f"(removed what this run wrote: {small_disk}/validation/run-1)" in said
    # What the run wrote is gone: the disk is as free as before, but for empty folders
    # and the retrain slot's lock file.
    assert shutil.disk_usage(small_disk).free >= free - 16 * 1024
    assert {p.relative_to(small_disk).as_posix() for p in small_disk.rglob("*")
            if p.is_file()} <= {"anomdet/.retrain.lock"}
    with get_engine(url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM anomdet_model_versions")).scalar() == 0
        run = conn.execute(sa.text("SELECT state, reason FROM anomdet_runs")).one()
    assert run.state == "failed" and run.reason == "DiskFull: " + said.removeprefix("error: ")


def test_a_disk_too_small_for_the_base_model_is_refused_before_training(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomdet.encoder import TINY_RANDOM, load_base_model

    # A local base model of known size: the tiny model, saved as a user would keep one.
    base = tmp_path / "base-model"
    model, tokenizer = load_base_model(TINY_RANDOM, seed=0)
    model.save_pretrained(base, safe_serialization=True)
    tokenizer.save_pretrained(base)
    size = sum(p.stat().st_size for p in base.rglob("*") if p.suffix in
               (".safetensors", ".json", ".txt", ".model"))
    monkeypatch.setattr("anomdet.artifact.free_bytes", lambda _folder: size)  # < 2 copies
    before = state(db.url)
    said = one_error(cli("retrain", "--base-model", str(base)))
    artifacts = tmp_path / "artifacts"
    assert said == (f"error: no space for a run fine-tuning {base} (a kept challenger and a "
                    f"model artifact) in {artifacts}: it needs about "
                    f"{2 * size / 2**20:,.1f} MB, and {size / 2**20:,.1f} MB is free; free "
                    "space there or set ANOMDET_ARTIFACTS_DIR to a folder with room, then run "
                    "again"), said
    assert_unchanged(before, db.url)  # not even a run row: nothing started
