"""Operations gone wrong, met through the `anomdet` command: unreachable or unusable
databases, mistyped settings, damaged or missing artifacts, record text that looks
like markup, users' own grants and views.

Each case checks the exit code, that exactly one line starts with `error:` and no
traceback is printed, and that the rows and the champion are what they were.
"""

# ruff: noqa: F811 - the shared fixtures are imported, then requested by name

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import Result

from anomdet.artifact import MANIFEST_FILE
from db.engine import get_engine
from tests.configs import records_mapping
from tests.conftest import POSTGRES_URL, _postgres_admin
from tests.flows.test_retrain import seed_records
from tests.test_bad_input import (  # noqa: F401 - fixtures requested by name
    Database,
    assert_unchanged,
    cli,
    create_events,
    db,
    execute,
    labelled_ids,
    map_records,
    state,
    toy_rows,
)
from tests.versions import promote

pytestmark = pytest.mark.usefixtures("prefect_harness")
COMMANDS = [["status"], ["flagged"], ["models"], ["rollback", "1", "--reason", "x"],
            ["import-csv", "records.csv"]]


def one_error(result: Result) -> str:
    """The command failed cleanly: exit 1, one `error:` line, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def run(command: list[str], tmp_path: Path) -> Result:
    csv = tmp_path / "records.csv"
    csv.write_text("id,text,label\n9001,a new record,0\n")
    return cli(*[str(csv) if arg == "records.csv" else arg for arg in command])


# --- databases that cannot be used ------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_that_is_not_sqlite(command: list[str], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notes.db"
    path.write_text("shopping list: milk, eggs, a new database\n" * 20)
    content = path.read_bytes()
    monkeypatch.setenv("ANOMDET_DATABASE_URL", f"sqlite:///{path}")
    said = one_error(run(command, tmp_path))
    assert said == (f"error: {path} is not a SQLite database (sqlite: file is not a database); "
                    "point ANOMDET_DATABASE_URL at an anomdet SQLite file, or at a new file "
                    "name to start afresh"), said
    assert path.read_bytes() == content


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_that_does_not_exist(command: list[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "no" / "such"
    monkeypatch.setenv("ANOMDET_DATABASE_URL", f"sqlite:///{folder / 'anomdet.db'}")
    said = one_error(run(command, tmp_path))
    assert f"the folder {folder} does not exist; create it" in said, said
    assert not folder.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_closed_port(command: list[str], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("ANOMDET_DATABASE_URL",
                       f"postgresql+psycopg://anomdet:s3cret@127.0.0.1:{port}/anomdet")
    said = one_error(run(command, tmp_path))
    assert said == (f"error: cannot connect to PostgreSQL at 127.0.0.1:{port}: connection "
                    "refused; start the server or fix the host and port in "
                    "ANOMDET_DATABASE_URL"), said


@pytest.mark.postgres
@pytest.mark.parametrize("command", COMMANDS)
def test_a_postgres_database_that_does_not_exist(command: list[str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    admin = _postgres_admin()
    url = sa.engine.make_url(POSTGRES_URL).set(database="anomdet_no_such_db", password="s3cret")
    monkeypatch.setenv("ANOMDET_DATABASE_URL", url.render_as_string(hide_password=False))
    result = run(command, tmp_path)
    said = one_error(result)
    assert "PostgreSQL database 'anomdet_no_such_db' does not exist on" in said, said
    assert "createdb anomdet_no_such_db" in said
    assert "s3cret" not in result.output
    with admin.connect() as conn:
        assert not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = "
                                        "'anomdet_no_such_db'")).first()
    admin.dispose()


@pytest.mark.parametrize("command", COMMANDS + [["retrain"], ["score"]])
def test_a_database_url_that_is_not_one(command: list[str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMDET_DATABASE_URL", "garbage")
    said = one_error(run(command, tmp_path))
    assert said == ("error: invalid configuration (ANOMDET_* environment variables): "
                    "ANOMDET_DATABASE_URL is not a database URL; use e.g. "
                    "sqlite:///anomdet.db or postgresql+psycopg://user@host/db"), said


def test_a_host_that_never_answers(silent_server: int, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMDET_DATABASE_URL",
                       f"postgresql+psycopg://anomdet@127.0.0.1:{silent_server}/anomdet")
    monkeypatch.setenv("ANOMDET_CONNECT_TIMEOUT", "1")
    said = one_error(cli("status"))
    assert said.startswith(f"error: PostgreSQL at 127.0.0.1:{silent_server} did not answer "
                           "within 1 s (connection timeout)"), said
    assert "ANOMDET_CONNECT_TIMEOUT" in said


def _read_only(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    if db.backend == "sqlite":
        monkeypatch.setenv("ANOMDET_DATABASE_URL", f"sqlite:///file:{db.path}?mode=ro&uri=true")
    else:
        name = sa.engine.make_url(db.url).database
        execute(db.url, sa.text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
        get_engine(db.url).dispose()  # the setting holds for new sessions only


@pytest.mark.parametrize("command", [["rollback", "1", "--reason", "x"],
                                     ["import-csv", "records.csv"]])
def test_a_read_only_database(db: Database, command: list[str], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    before = state(db.url)
    _read_only(db, monkeypatch)
    said = one_error(run(command, tmp_path))
    assert "is read-only" in said, said
    if db.backend == "postgresql":
        name = sa.engine.make_url(db.url).database
        with _postgres_admin().connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" RESET default_transaction_read_only'))
        get_engine(db.url).dispose()
    assert_unchanged(before, db.url)
    # Reading needs no writes: status still answers.
    assert cli("status").exit_code == 0


def test_a_version_number_out_of_range(db: Database) -> None:
    before = state(db.url)
    said = one_error(cli("rollback", "99999999999999999999", "--reason", "typo"))
    assert said == ("error: 'anomdet' has no version 99999999999999999999; versions: [1]"), said
    assert_unchanged(before, db.url)


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database\n" * 50)
    monkeypatch.setenv("ANOMDET_DATABASE_URL", f"sqlite:///{path}")
    result = cli("--debug", "status")
    assert result.exit_code == 1
    assert isinstance(result.exception, sa.exc.DatabaseError)
    monkeypatch.setenv("ANOMDET_DEBUG", "1")
    assert isinstance(cli("status").exception, sa.exc.DatabaseError)


# --- settings checked before training ---------------------------------------------------------


@pytest.mark.parametrize(("name", "nearest"), [
    ("ANOMDET_TRAINNG__EPOCHS", "ANOMDET_TRAINING__EPOCHS"),
    ("ANOMDET_TRAINING__EPOCH", "ANOMDET_TRAINING__EPOCHS"),
])
def test_a_mistyped_variable(db: Database, name: str, nearest: str,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "1")
    before = state(db.url)
    said = one_error(cli("retrain"))
    assert f"unknown variable {name} (did you mean {nearest}?)" in said, said
    assert_unchanged(before, db.url)


@pytest.mark.parametrize(("variable", "value", "phrase"), [
    ("ANOMDET_PROMOTION__PRIMARY_METRIC", "f2",
     "ANOMDET_PROMOTION__PRIMARY_METRIC=f2: unknown metric 'f2'"),
    ("ANOMDET_VALIDATION__ANOMALY_RATE_MIN", "0.6",
     "below ANOMDET_VALIDATION__ANOMALY_RATE_MIN=0.6"),
    ("ANOMDET_ARTIFACTS_DIR", "{file}/artifacts", "is not writable"),
])
def test_settings_refused_before_training(db: Database, variable: str, value: str, phrase: str,
                                          tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    monkeypatch.setenv(variable, value.format(file=a_file))
    before = state(db.url)
    said = one_error(cli("retrain"))
    assert phrase in said, said
    assert_unchanged(before, db.url)  # not even a run row: nothing started


def test_a_timestamp_that_is_not_one(db: Database) -> None:
    if db.backend == "postgresql":
        pytest.skip("a PostgreSQL timestamp column holds only timestamps")
    execute(db.url, sa.text("UPDATE records SET created_at = '02/01/2026 3am' "
                            "WHERE id IN (5, 7)"))
    before = state(db.url)
    said = one_error(cli("retrain"))
    assert said.startswith(
        "error: records table 'records', column 'created_at': 2 value(s) are not timestamps "
        "(id 5: '02/01/2026 3am', id 7: '02/01/2026 3am')"), said
    [run_id] = assert_unchanged(before, db.url, new_runs=1)


def test_retries_only_for_connection_failures() -> None:
    from tasks.database import only_transient

    class State:
        def __init__(self, data: object) -> None:
            self.data = data

    refused = sa.exc.OperationalError("SELECT 1", {}, Exception("Connection refused"))
    missing = sa.exc.OperationalError("SELECT 1", {}, Exception('database "x" does not exist'))
    assert only_transient(None, None, State(refused))
    assert not only_transient(None, None, State(missing))
    assert not only_transient(None, None, State(ValueError("Invalid isoformat string")))


# --- the champion means what the database says ------------------------------------------------


def _champion(url: str) -> tuple[int, str]:
    with get_engine(url).connect() as conn:
        return tuple(conn.execute(sa.text(
            "SELECT id, artifact_uri FROM anomdet_model_versions WHERE status = 'champion'"
        )).one())


def _second_champion(db: Database, tmp_path: Path) -> Path:
    """Version 2 champion on a copy of version 1's artifact; returns version 1's copy."""
    from db import repository as repo
    from db.engine import session_scope

    vid, uri = _champion(db.url)
    mine = tmp_path / "v1"
    shutil.copytree(uri, mine)
    execute(db.url, sa.text("UPDATE anomdet_model_versions SET artifact_uri = :u WHERE id = :i")
            .bindparams(u=str(mine), i=vid))
    with session_scope(get_engine(db.url)) as session:
        v1 = repo.get_champion(session=session, model_name="anomdet")
        fields = {k: getattr(v1, k) for k in ("model_name", "base_model", "artifact_uri",
                                              "weights_sha256", "data_fingerprint",
                                              "hyperparameters", "metrics", "threshold")}
        promote(session, expected_champion_id=v1.id, **{**fields, "artifact_uri": uri})
    return mine


@pytest.mark.parametrize("damage", ["folder-gone", "threshold-edited"])
def test_rollback_refuses_an_artifact_that_is_gone_or_altered(db: Database, damage: str,
                                                              tmp_path: Path) -> None:
    artifact = _second_champion(db, tmp_path)
    if damage == "folder-gone":
        shutil.rmtree(artifact)
    else:
        meta = artifact / "anomdet.json"
        meta.write_text(meta.read_text().replace('"threshold": ', '"threshold": 1e-300, "was": '))
    before = state(db.url)
    said = one_error(cli("rollback", "1", "--reason", "back to the old one"))
    assert said.startswith("error: cannot roll back to version 1: "), said
    if damage == "folder-gone":
        assert f"model artifact folder {artifact} is missing" in said
    else:
        assert f"model artifact at {artifact} is corrupted: file checksum of anomdet.json" in said
    assert_unchanged(before, db.url)


def test_scoring_refuses_an_edited_threshold(db: Database, tmp_path: Path) -> None:
    _, uri = _champion(db.url)
    artifact = tmp_path / "champion"
    shutil.copytree(uri, artifact)
    execute(db.url, sa.text("UPDATE anomdet_model_versions SET artifact_uri = :u "
                            "WHERE status = 'champion'").bindparams(u=str(artifact)))
    meta = artifact / "anomdet.json"
    meta.write_text(meta.read_text().replace('"threshold": ', '"threshold": 1e-300, "was": '))
    seed_records(db.url, pd.DataFrame({"id": [9001], "text": ["cache 1 refreshed"],
                                       "label": pd.array([None], dtype="Int64")}))
    before = state(db.url)
    said = one_error(cli("score"))
    assert "corrupted: file checksum of anomdet.json" in said, said
    assert_unchanged(before, db.url)
    assert MANIFEST_FILE in {p.name for p in artifact.iterdir()}


# --- users' objects and output that is data ----------------------------------------------------


def test_users_grants_and_views_survive_runs(db: Database) -> None:
    execute(db.url, sa.text("CREATE VIEW my_flags AS SELECT record_id, score FROM anomdet_flagged"))
    if db.backend == "postgresql":
        execute(db.url, sa.text("DROP ROLE IF EXISTS anomdet_reader"),
                sa.text("CREATE ROLE anomdet_reader"),
                sa.text("GRANT SELECT ON anomdet_flagged TO anomdet_reader"))
    seed_records(db.url, pd.DataFrame({"id": [9001], "text": ["cache 1 refreshed"],
                                       "label": pd.array([None], dtype="Int64")}))
    result = cli("score")
    assert result.exit_code == 0, result.output
    with get_engine(db.url).connect() as conn:
        conn.execute(sa.text("SELECT * FROM my_flags")).all()
        if db.backend == "postgresql":
            assert conn.execute(sa.text(
                "SELECT has_table_privilege('anomdet_reader', 'anomdet_flagged', 'SELECT')"
            )).scalar_one()
    if db.backend == "postgresql":
        execute(db.url, sa.text("DROP VIEW my_flags"),
                sa.text("REVOKE ALL ON anomdet_flagged FROM anomdet_reader"),
                sa.text("DROP ROLE anomdet_reader"))


def test_flagged_text_is_shown_as_it_is(db: Database) -> None:
    texts = ["[/] worker exited", "[link=https://example.invalid]click[/link] here"]
    seed_records(db.url, pd.DataFrame({"id": [9001, 9002], "text": texts,
                                       "label": pd.array([None, None], dtype="Int64")}))
    # The threshold the database records is the one scoring uses: at 0, every record flags.
    execute(db.url, sa.text("UPDATE anomdet_model_versions SET threshold = 0 "
                            "WHERE status = 'champion'"))
    scored = cli("score")
    assert scored.exit_code == 0, scored.output
    with get_engine(db.url).connect() as conn:
        shown = set(conn.execute(sa.text(
            "SELECT text FROM anomdet_flagged WHERE record_id IN ('9001', '9002')")).scalars())
    assert shown == set(texts)
    result = cli("flagged", "--limit", "1000")
    assert result.exit_code == 0, result.output
    for text in texts:
        assert text in result.output, result.output
    assert "\x1b]8;" not in result.output  # no terminal hyperlink


def _view_sql(conn: sa.Connection) -> tuple:
    if conn.dialect.name == "postgresql":
        return tuple(conn.execute(sa.text(
            "SELECT c.oid, pg_get_viewdef(c.oid) FROM pg_class c "
            "WHERE c.relname = 'anomdet_flagged'")).one())
    return (conn.execute(sa.text("SELECT sql FROM sqlite_master "
                                 "WHERE name = 'anomdet_flagged'")).scalar_one(),)


def test_the_view_is_replaced_only_when_its_definition_changes(db_url: str) -> None:
    from db.engine import migrate
    from db.repository import ensure_flagged_view

    engine = get_engine(db_url)
    migrate(engine)
    execute(db_url, sa.text("CREATE TABLE events (id INTEGER PRIMARY KEY, text TEXT, "
                            "body TEXT, title VARCHAR(50), label INTEGER)"))
    events = sa.Table("events", sa.MetaData(), autoload_with=engine)
    mapping = records_mapping(table="events", timestamp_column=None)
    with engine.begin() as conn:
        ensure_flagged_view(conn, events, mapping)
    execute(db_url, sa.text("CREATE VIEW my_flags AS SELECT record_id FROM anomdet_flagged"))
    with engine.begin() as conn:
        first = _view_sql(conn)
        ensure_flagged_view(conn, events, mapping)  # unchanged: left alone
        assert _view_sql(conn) == first
        # Another text column of the same type: replaced in place, the user's view kept.
        ensure_flagged_view(conn, events, records_mapping(table="events", text_column="body",
                                                          timestamp_column=None))
        assert _view_sql(conn) != first
        conn.execute(sa.text("SELECT * FROM my_flags")).all()
    if engine.dialect.name != "postgresql":
        return
    # A column of another type needs a new view, which the user's view prevents.
    with pytest.raises(ValueError, match="anomdet_flagged must change its columns, but other "
                                         "objects depend on it .*drop your views on"), \
            engine.begin() as conn:
        ensure_flagged_view(conn, events, records_mapping(table="events", text_column="title",
                                                          timestamp_column=None))


def test_markup_in_record_values_stays_text_in_data_docs(db: Database, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMDET_VALIDATION__DATA_DOCS", "true")
    payload = "<img src=x onerror=alert(1)>"
    [rid] = labelled_ids(1)
    if db.backend == "sqlite":
        execute(db.url, sa.text("UPDATE records SET label = :v WHERE id = :i")
                .bindparams(v=payload, i=rid))
    else:  # an integer column cannot hold it: a label column of type TEXT can
        rows = [{**r, "label": payload if r["id"] == rid else
                 (None if r["label"] is None else str(r["label"]))} for r in toy_rows()]
        create_events(db.url, [sa.Column("id", sa.BigInteger, primary_key=True),
                               sa.Column("text", sa.Text), sa.Column("label", sa.Text)], rows)
        map_records(monkeypatch, table="events", timestamp_column="")
    before = state(db.url)
    result = cli("retrain")
    said = one_error(result)
    assert said == "error: data validation failed:", said
    assert payload in result.output  # the terminal shows the value as it is
    assert_unchanged(before, db.url, new_runs=1)
    pages = list((tmp_path / "artifacts" / "validation").rglob("*.html"))
    assert pages, "no Data Docs were built"
    html = "\n".join(page.read_text() for page in pages)
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert payload not in html
