"""Bad input, met the way a user meets it: through the `anomdet` command.

Every case starts from a database whose champion is already trained, feeds one bad
input and checks that the command exits non-zero, that its message says what is
wrong and where (ids, CSV lines, column, table), and that not one row changed in
the anomdet tables or the records. A retraining stopped by a check records its own
run in `anomdet_runs`; that row is the one change allowed, and it is checked too.

Training the champion is the slow part, so it happens once per database backend in a
test session (`champion_template`, tests/conftest.py); each test works on a copy of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import Result
from typer.testing import CliRunner

from anomdet.artifact import WEIGHTS_FILE
from cli.app import app
from db.engine import get_engine
from tests.databases import Database, copy_database, drop_database, new_database
from tests.flows.test_retrain import seed_records, toy_records

pytestmark = pytest.mark.usefixtures("prefect_harness")
# Wide enough that rich output is not wrapped or abbreviated.
runner = CliRunner(env={"COLUMNS": "200"})

ROWS = 400
# The settings of the `anomdet_env` fixture; the template's first run always promotes, so
# every test starts with a champion whatever the tiny model scores.
SETTINGS_ENV = {
    "ANOMDET_TRAINING__BASE_MODEL": "tiny-random",
    "ANOMDET_TRAINING__EPOCHS": "2",
    "ANOMDET_TRAINING__MIN_STEPS": "40",
    "ANOMDET_TRAINING__MAX_LENGTH": "48",
    "ANOMDET_TRAINING__LEARNING_RATE": "0.001",
    "ANOMDET_PROMOTION__BOOTSTRAP_RESAMPLES": "0",
    "ANOMDET_PROMOTION__FIRST_RUN": "always",
    "ANOMDET_SCORING__BACKFILL_CHUNKS": "1",
    # As in `anomdet_env`: no Data Docs (the test that reads them turns them on) and
    # no probed head (tested in tests/anomdet/test_model.py).
    "ANOMDET_VALIDATION__DATA_DOCS": "false",
    "ANOMDET_TRAINING__PROBE_HEAD": "false",
}
INJECTED = "records; DROP TABLE x"


def train_champion_template(backend: str, root: Path) -> Database:
    """Toy records and a champion trained by one `anomdet retrain`, in a new database of
    `backend` (the session's `champion_template` fixture, tests/conftest.py)."""
    template = new_database(backend, root)
    seed_records(template.url, toy_records(ROWS))
    env = {**SETTINGS_ENV, "ANOMDET_DATABASE_URL": template.url,
           "ANOMDET_ARTIFACTS_DIR": str(root / "artifacts")}
    first = runner.invoke(app, ["retrain"], env=env)
    assert first.exit_code == 0 and "decision: promoted" in first.output, first.output
    return template


@pytest.fixture
def db(champion_template: Database, tmp_path: Path,
       monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """A private copy of the template database, with anomdet's settings pointing at it."""
    copy = copy_database(champion_template, tmp_path)
    for name, value in SETTINGS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ANOMDET_DATABASE_URL", copy.url)
    monkeypatch.setenv("ANOMDET_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    yield copy
    drop_database(copy)


# --- what may not change ----------------------------------------------------------------


def _rows(conn: sa.Connection, name: str) -> list[str]:
    table = sa.table(name)
    return sorted(repr(tuple(r)) for r in conn.execute(sa.select(sa.text("*")).select_from(table)))


def state(url: str) -> dict[str, Any]:
    """Row counts of every table; every row of the user's tables; versions, flags, scores."""
    engine = get_engine(url)
    names = [n for n in sa.inspect(engine).get_table_names() if n != "alembic_version"]
    with engine.connect() as conn:
        count = sa.select(sa.func.count())
        counts = {n: conn.execute(count.select_from(sa.table(n))).scalar_one() for n in names}
        user_rows = {n: _rows(conn, n) for n in names if not n.startswith("anomdet_")}
        versions = conn.execute(sa.text(
            "SELECT id, version, status, weights_sha256 FROM anomdet_model_versions "
            "ORDER BY id")).all()
        flags = conn.execute(sa.text(
            "SELECT record_id, model_version_id, score FROM anomdet_flags "
            "ORDER BY model_version_id, record_id")).all()
        scores = _rows(conn, "anomdet_scores")
        runs = conn.execute(sa.text(
            "SELECT id, state, decision FROM anomdet_runs ORDER BY id")).all()
    champions = [tuple(v) for v in versions if v.status == "champion"]
    return {"counts": counts, "user_rows": user_rows, "versions": [tuple(v) for v in versions],
            "champion": champions, "flags": [tuple(f) for f in flags], "scores": scores,
            "runs": [tuple(r) for r in runs]}


def assert_unchanged(before: dict[str, Any], url: str, *, new_runs: int = 0) -> list[int]:
    """Nothing changed but `new_runs` added rows of anomdet_runs; returns their ids."""
    after = state(url)
    assert after["champion"], "the fixture's champion is gone"
    assert after["champion"] == before["champion"]
    old_runs = after["runs"][: len(before["runs"])]
    assert old_runs == before["runs"], "an earlier run's row changed"
    added = after["runs"][len(before["runs"]):]
    assert len(added) == new_runs, f"expected {new_runs} new run(s), got {added}"
    expected = {**before, "runs": after["runs"],
                "counts": {**before["counts"],
                           "anomdet_runs": before["counts"]["anomdet_runs"] + new_runs}}
    assert after == expected
    return [r[0] for r in added]


def run_row(url: str, run_id: int) -> dict[str, Any]:
    """One row of anomdet_runs with its JSON columns decoded."""
    with get_engine(url).connect() as conn:
        row = conn.execute(sa.text(
            "SELECT state, decision, reason, validation FROM anomdet_runs WHERE id = :id"),
            {"id": run_id}).one()
    validation = row.validation
    if isinstance(validation, str):  # SQLite hands JSON back as text
        validation = json.loads(validation)
    return {"state": row.state, "decision": row.decision, "reason": row.reason,
            "validation": validation}


# --- editing the records before a case ----------------------------------------------------


def execute(url: str, *statements: Any) -> None:
    """Run statements in one transaction."""
    with get_engine(url).begin() as conn:
        for statement in statements:
            conn.execute(statement)


def records(url: str) -> sa.Table:
    """The records table, reflected."""
    return sa.Table("records", sa.MetaData(), autoload_with=get_engine(url))


def labelled_ids(k: int, label: int | None = None) -> list[int]:
    """The first `k` ids of labelled toy records (of one class when `label` is given)."""
    frame = toy_records(ROWS)
    keep = frame["label"].notna() if label is None else frame["label"] == label
    return frame.loc[keep.fillna(False), "id"].astype(int).tolist()[:k]


def set_text(url: str, ids: list[int], values: list[Any]) -> None:
    """Give record ids[i] the text values[i]."""
    table = records(url)
    execute(url, *(table.update().where(table.c.id == i).values(text=v)
                   for i, v in zip(ids, values, strict=True)))


def create_events(url: str, columns: list[sa.Column], rows: list[dict[str, Any]]) -> None:
    """A table `events` of the user's own making, filled with `rows`."""
    table = sa.Table("events", sa.MetaData(), *columns)
    table.create(get_engine(url))
    execute(url, table.insert().values(rows))


def toy_rows() -> list[dict[str, Any]]:
    """The toy records as plain rows (a missing label is None)."""
    frame = toy_records(ROWS)
    return [{"id": int(r.id), "text": r.text,
             "label": None if pd.isna(r.label) else int(r.label)}
            for r in frame.itertuples()]


def map_records(monkeypatch: pytest.MonkeyPatch, **names: str) -> None:
    """Point the records mapping at other names, as a user does with ANOMDET_RECORDS__*."""
    for key, value in names.items():
        monkeypatch.setenv(f"ANOMDET_RECORDS__{key.upper()}", value)


# --- what the user sees ----------------------------------------------------------------


def cli(*args: str) -> Result:
    """Run `anomdet ARGS` as a user would."""
    return runner.invoke(app, list(args))


def message(result: Result) -> str:
    """The command's own error message: its last `error:` and what follows.

    Prefect logs a failed flow run above it; the message is what anomdet itself says.
    """
    assert result.exit_code == 1, result.output
    # A clean exit: the command caught the problem, it did not crash with a traceback.
    assert isinstance(result.exception, SystemExit), result.exception
    starts = [m.start() for m in re.finditer(r"(?m)^error: ", result.output)]
    assert starts, f"no error message in:\n{result.output}"
    said = result.output[starts[-1]:]
    # BAD_INPUT_TRANSCRIPT=FILE collects what the user saw in each case, for reading.
    if transcript := os.environ.get("BAD_INPUT_TRANSCRIPT"):
        with open(transcript, "a", encoding="utf-8") as out:
            out.write(f"## {os.environ.get('PYTEST_CURRENT_TEST', '?')}\n{said}\n")
    return said


def failure_line(result: Result, expectation: str, column: str | None) -> str:
    """The line of the validation failure for `expectation` on `column`."""
    where = f" [{column}]" if column else ""
    lines = [ln for ln in message(result).splitlines()
             if ln.startswith(f"- {expectation}{where}:")]
    assert lines, f"{expectation}{where} not named in:\n{message(result)}"
    return lines[0]


def named_ids(line: str) -> set[str]:
    """The record ids a failure line names after `ids:`."""
    match = re.search(r"; ids: ([^(]*)", line)
    assert match, f"no ids in {line!r}"
    return {part.strip() for part in match.group(1).split(",")}


def assert_gate_closed(url: str, before: dict[str, Any], result: Result,
                       failures: dict[tuple[str, str | None], list[Any] | None]) -> None:
    """The retraining failed validation on exactly `failures` (expectation, column) -> ids,
    said so on the command line, recorded one failed_validation run and changed nothing else."""
    assert message(result).startswith("error: data validation failed:\n"), result.output
    for (expectation, column), ids in failures.items():
        line = failure_line(result, expectation, column)
        if ids is not None:
            assert named_ids(line) == {str(i) for i in ids}, line
    [run_id] = assert_unchanged(before, url, new_runs=1)
    run = run_row(url, run_id)
    assert run["state"] == "failed" and run["decision"] == "failed_validation"
    assert run["reason"].startswith("data validation failed")
    recorded = {(f["expectation"], f["column"]) for f in run["validation"]["failures"]}
    assert recorded == set(failures)


# --- retraining on bad records: the data gate closes -------------------------------------------


def test_null_text(db: Database) -> None:
    ids = labelled_ids(3)
    set_text(db.url, ids, [None, None, None])
    before = state(db.url)
    result = cli("retrain")
    assert_gate_closed(db.url, before, result, {
        ("expect_column_values_to_not_be_null", "text"): ids,
    })
    # The recorded reason, as `anomdet status` shows it, names the column too.
    status = cli("status")
    assert status.exit_code == 0, status.output
    assert "expect_column_values_to_not_be_null [text]" in status.output, status.output


def test_blank_text(db: Database) -> None:
    ids = labelled_ids(3)
    set_text(db.url, ids, ["", "   ", "\t\n"])
    before = state(db.url)
    result = cli("retrain")
    assert_gate_closed(db.url, before, result, {
        ("expect_column_values_to_be_between", "text_stripped_length"): ids,
    })
    assert "fix blank or oversized texts" in message(result)


def test_text_of_one_megabyte(db: Database) -> None:
    [rid] = labelled_ids(1)
    set_text(db.url, [rid], ["disk full " * 100_000])
    before = state(db.url)
    result = cli("retrain")
    assert_gate_closed(db.url, before, result, {
        ("expect_column_values_to_be_between", "text_stripped_length"): [rid],
    })
    line = failure_line(result, "expect_column_values_to_be_between", "text_stripped_length")
    assert "999999" in line and "20000" in line, line
    assert len(message(result)) < 2_000, "the text itself must not be echoed"


@pytest.mark.parametrize("variant", ["blob-in-text-column",
                                     "text-column-mapped-to-integers"])
def test_non_text_in_text_column(db: Database, variant: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if variant == "blob-in-text-column":
        if db.backend == "postgresql":
            pytest.skip("a PostgreSQL text column holds only text; the integer-column "
                        "variant covers non-text values there")
        # SQLite stores a number given to a TEXT column as text, but keeps bytes as bytes.
        ids = labelled_ids(3)
        set_text(db.url, ids, [b"\x00\xff", b"\x89PNG", b"42"])
        expected: list[Any] | None = ids
    else:
        create_events(db.url, [sa.Column("id", sa.BigInteger, primary_key=True),
                               sa.Column("code", sa.Integer),
                               sa.Column("label", sa.SmallInteger)],
                      [{"id": r["id"], "code": 1000 + r["id"], "label": r["label"]}
                       for r in toy_rows()])
        map_records(monkeypatch, table="events", text_column="code", timestamp_column="")
        expected = None  # every record: the first of them are named
    before = state(db.url)
    result = cli("retrain")
    assert_gate_closed(db.url, before, result, {
        ("expect_column_values_to_be_of_type", "text"): expected,
    })
    line = failure_line(result, "expect_column_values_to_be_of_type", "text")
    assert "store text as strings" in line
    if expected is None:
        assert f"{len(labelled_ids(ROWS))} of {len(labelled_ids(ROWS))} records" in line, line
        assert named_ids(line) == {str(i) for i in labelled_ids(20)}


def test_labels_outside_zero_and_one(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = labelled_ids(3)
    bad = dict(zip(ids, [2, -1, "yes"], strict=True))
    if db.backend == "sqlite":
        # An INTEGER-affinity column keeps 'yes' as text: SQLite does not enforce types.
        table = records(db.url)
        execute(db.url, *(table.update().where(table.c.id == i).values(label=v)
                          for i, v in bad.items()))
    else:
        # A label column of type TEXT: its '0' and '1' are good labels, the rest are not.
        rows = [{**r, "label": str(bad.get(r["id"], r["label"]))
                 if r["label"] is not None else None} for r in toy_rows()]
        create_events(db.url, [sa.Column("id", sa.BigInteger, primary_key=True),
                               sa.Column("text", sa.Text), sa.Column("label", sa.Text)], rows)
        map_records(monkeypatch, table="events", timestamp_column="")
    before = state(db.url)
    result = cli("retrain")
    assert_gate_closed(db.url, before, result, {
        ("expect_column_values_to_be_in_set", "label"): ids,
    })
    line = failure_line(result, "expect_column_values_to_be_in_set", "label")
    assert f"3 of {len(labelled_ids(ROWS))} records unexpected" in line, line
    assert re.search(r"e\.g\. '?2'?, '?-1'?, 'yes'", line), line


def test_duplicate_ids(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = labelled_ids(2)
    copies = [{"id": i, "text": f"a second record numbered {i}", "label": 0} for i in ids]
    create_events(db.url, [sa.Column("id", sa.BigInteger), sa.Column("text", sa.Text),
                           sa.Column("label", sa.SmallInteger)], toy_rows() + copies)
    map_records(monkeypatch, table="events", timestamp_column="")
    before = state(db.url)
    result = cli("retrain")
    assert_gate_closed(db.url, before, result, {
        ("expect_column_values_to_be_unique", "id"): ids,
    })
    assert "make record ids unique" in message(result)


def test_one_class_only(db: Database) -> None:
    table = records(db.url)
    execute(db.url, table.update().where(table.c.label.is_not(None)).values(label=0))
    before = state(db.url)
    result = cli("retrain")
    labelled = len(labelled_ids(ROWS))
    assert_gate_closed(db.url, before, result, {
        ("expect_column_sum_to_be_between", "label_value"): None,
        ("expect_column_mean_to_be_between", "label_value"): None,
    })
    line = failure_line(result, "expect_column_sum_to_be_between", "label_value")
    assert f"0 anomalous and {labelled} normal" in line, line
    assert "label more records of the scarce class" in line


def test_too_few_rows(db: Database) -> None:
    keep = labelled_ids(40, label=0) + labelled_ids(10, label=1)
    table = records(db.url)
    execute(db.url, table.update().where(table.c.id.not_in(keep)).values(label=None))
    before = state(db.url)
    result = cli("retrain")
    assert_gate_closed(db.url, before, result, {
        ("expect_table_row_count_to_be_between", None): None,
    })
    line = failure_line(result, "expect_table_row_count_to_be_between", None)
    assert "50" in line and "at least 100" in line, line


# --- records that cannot be found -------------------------------------------------------------


@pytest.mark.parametrize("command", [["retrain"], ["score"]])
def test_records_table_that_does_not_exist(db: Database, command: list[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    map_records(monkeypatch, table="events")
    before = state(db.url)
    result = cli(*command)
    said = message(result)
    assert "records table 'events' does not exist in the database" in said, said
    assert "(tables there: records)" in said and "ANOMDET_RECORDS__TABLE" in said
    assert_unchanged(before, db.url)


@pytest.mark.parametrize("command", [["retrain"], ["score"], ["import-csv", "records.csv"],
                                     ["demo", "--rows", "100"]])
def test_mapped_column_that_does_not_exist(db: Database, command: list[str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    csv = tmp_path / "records.csv"
    csv.write_text("id,text,label\n9001,a new record,0\n")
    map_records(monkeypatch, text_column="body")
    before = state(db.url)
    result = cli(*[str(csv) if arg == "records.csv" else arg for arg in command])
    said = message(result)
    assert "records table 'records' lacks the mapped text column 'body'" in said, said
    assert "its columns are id, text, label, created_at" in said
    assert_unchanged(before, db.url)


@pytest.mark.parametrize("setting", ["table", "text_column"])
@pytest.mark.parametrize("command", [["retrain"], ["score"], ["import-csv", "records.csv"]])
def test_sql_in_a_configured_name(db: Database, setting: str, command: list[str],
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv = tmp_path / "records.csv"
    csv.write_text("id,text,label\n9001,a new record,0\n")
    execute(db.url, sa.text("CREATE TABLE x (a INTEGER)"), sa.text("INSERT INTO x VALUES (1)"))
    map_records(monkeypatch, **{setting: INJECTED})
    before = state(db.url)
    result = cli(*[str(csv) if arg == "records.csv" else arg for arg in command])
    said = message(result)
    what = "records table" if setting == "table" else "text column"
    assert f"{what} {INJECTED!r} is not a plain SQL identifier" in said, said
    assert "invalid configuration (ANOMDET_* environment variables)" in said
    tables = sa.inspect(get_engine(db.url)).get_table_names()
    assert "records" in tables and "x" in tables
    assert_unchanged(before, db.url)


# --- a damaged champion ----------------------------------------------------------------------


def test_corrupted_champion_artifact(db: Database, tmp_path: Path) -> None:
    engine = get_engine(db.url)
    with engine.connect() as conn:
        vid, uri = conn.execute(sa.text("SELECT id, artifact_uri FROM anomdet_model_versions "
                                        "WHERE status = 'champion'")).one()
    # A copy of its own, so the damage stays in this test.
    artifact = tmp_path / "champion"
    shutil.copytree(uri, artifact)
    execute(db.url, sa.text("UPDATE anomdet_model_versions SET artifact_uri = :uri "
                            "WHERE id = :id").bindparams(uri=str(artifact), id=vid))
    weights = artifact / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
    weights.write_bytes(bytes(data))
    # Records the champion has not scored yet, so scoring has work to refuse.
    seed_records(db.url, pd.DataFrame({"id": [9001, 9002], "text": ["cache 1 refreshed",
                                                                     "user 2 signed in"],
                                       "label": pd.array([None, None], dtype="Int64")}))
    before = state(db.url)
    scored = cli("score")
    said = message(scored)
    assert f"model artifact at {artifact} is corrupted" in said, said
    assert "weights checksum" in said
    assert_unchanged(before, db.url)

    retrained = cli("retrain")
    said = message(retrained)
    assert f"model artifact at {artifact} is corrupted" in said, said
    [run_id] = assert_unchanged(before, db.url, new_runs=1)
    run = run_row(db.url, run_id)
    assert run["state"] == "failed" and run["decision"] == "failed"
    assert str(artifact) in run["reason"]


# --- malformed CSV files ---------------------------------------------------------------------

BAD_CSVS = {
    "bad-label": (b"id,text,label\n9001,ok,0\n9002,odd,yes\n9003,fine,1\n",
                  ["nothing imported", "column label must be 0, 1 or empty; line(s) 3"]),
    "unclosed-quote": (b'id,text,label\n9001,ok,0\n9002,"never closed,1\n9003,fine,0\n',
                       ["the record starting on line 3 is malformed", "check its quotes"]),
    "missing-column": (b"id,label\n9001,0\n9002,1\n",
                       ["missing column(s) text; the header has id, label"]),
    "not-utf8": ("id,text,label\n9001,ok,0\n9002,caf\u00e9 cr\u00e8me,1\n".encode("latin-1"),
                 ["line 3 is not UTF-8 (byte 0xe9", "save the file as UTF-8"]),
    "unquoted-comma": (b"id,text,label\n9001,disk full, retrying,1\n9002,ok,0\n",
                       ["line 2 has 4 fields but the header has 3", "double quotes"]),
}


@pytest.mark.parametrize("case", list(BAD_CSVS))
def test_malformed_csv(db: Database, case: str, tmp_path: Path) -> None:
    content, phrases = BAD_CSVS[case]
    path = tmp_path / f"{case}.csv"
    path.write_bytes(content)
    before = state(db.url)
    result = cli("import-csv", str(path))
    said = message(result)
    assert said.startswith(f"error: {path}: "), said
    for phrase in phrases:
        assert phrase in said, said
    assert_unchanged(before, db.url)


# --- scoring passes over records it cannot score -------------------------------------------------


def test_scoring_skips_records_without_text(db: Database) -> None:
    blank_ids, good_ids = [9001, 9002, 9003], [9004, 9005, 9006, 9007]
    texts = [None, "", "   "] + [f"cache {i} refreshed" for i in good_ids]
    seed_records(db.url, pd.DataFrame({"id": blank_ids + good_ids, "text": texts,
                                       "label": pd.array([None] * 7, dtype="Int64")}))
    result = cli("score")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):result.output.rindex("}") + 1])
    assert summary["skipped"] == 3 and summary["scored"] == len(good_ids)
    assert set(summary["skipped_example_ids"]) == {str(i) for i in blank_ids}
    with get_engine(db.url).connect() as conn:
        flagged = set(conn.execute(sa.text("SELECT record_id FROM anomdet_flags")).scalars())
    assert not flagged & {str(i) for i in blank_ids}
