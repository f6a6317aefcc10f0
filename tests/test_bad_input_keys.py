"""Record keys, met the way a user meets them: through the `anomdet` command.

Every unlabelled record is scored once per champion whatever its id (UUID, text of
any length, the whole BIGINT range, any order, no key at all), and again when its
text changes; `anomdet_flagged` shows a flag only beside the text it was given for.
An import never changes a record it was not given: ids the key column cannot hold
exactly are refused by line, and nothing is imported.

Each case runs on SQLite and PostgreSQL, on a copy of a database whose champion is
already trained (the fixtures of tests/test_bad_input.py).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import Result

from db.engine import get_engine
from tests import test_bad_input
from tests.test_bad_input import (
    ROWS,
    Database,
    assert_unchanged,
    cli,
    create_events,
    execute,
    labelled_ids,
    map_records,
    message,
    records,
    state,
    toy_rows,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")
# The fixture of the bad-input cases: a copy per test of a trained champion's database.
db = test_bad_input.db
INT64 = (-(2**63), 2**63 - 1)


def summary(result: Result) -> dict[str, Any]:
    """The JSON summary `anomdet score` prints."""
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):result.output.rindex("}") + 1])


def champion(url: str, model_name: str = "anomdet") -> tuple[int, int]:
    """(id, version) of the model's champion."""
    with get_engine(url).connect() as conn:
        return tuple(conn.execute(sa.text(
            "SELECT id, version FROM anomdet_model_versions WHERE status = 'champion' "
            "AND model_name = :m"), {"m": model_name}).one())


def scored_keys(url: str, version_id: int) -> dict[str, str | None]:
    """record id -> text hash of the version's kept scores."""
    with get_engine(url).connect() as conn:
        return dict(conn.execute(sa.text(
            "SELECT record_id, text_hash FROM anomdet_scores WHERE model_version_id = :v"),
            {"v": version_id}).all())


def flagged_view(url: str, model_name: str = "anomdet") -> dict[str, str]:
    """record id -> text, as `SELECT * FROM anomdet_flagged` shows them."""
    with get_engine(url).connect() as conn:
        return dict(conn.execute(sa.text(
            "SELECT record_id, text FROM anomdet_flagged WHERE model_name = :m"),
            {"m": model_name}).all())


def count(url: str, table: str) -> int:
    with get_engine(url).connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar()


def add_unlabelled(url: str, rows: dict[Any, str], table: str = "records",
                   id_type: sa.types.TypeEngine | None = None) -> None:
    """Insert unlabelled records; `id_type` writes ids as that type does (a UUID on SQLite)."""
    if id_type is None:
        target = sa.Table(table, sa.MetaData(), autoload_with=get_engine(url))
    else:
        target = sa.Table(table, sa.MetaData(), sa.Column("id", id_type),
                          sa.Column("text", sa.Text), sa.Column("label", sa.SmallInteger))
    execute(url, target.insert().values([{"id": k, "text": t, "label": None}
                                         for k, t in rows.items()]))


# --- 1. every record scored, whatever its key --------------------------------------------------


def test_score_finds_records_whatever_their_id_order(db: Database) -> None:
    champion_id, _ = champion(db.url)
    relabelled = labelled_ids(1)[0]  # an old record, its label set back to NULL
    table = records(db.url)
    execute(db.url, table.update().where(table.c.id == relabelled).values(label=None))
    new = {0: "cache 0 refreshed", -5: "payment -5 settled on time",
           INT64[0]: "user signed in from the office", INT64[1]: "nightly report exported"}
    add_unlabelled(db.url, new)
    before = champion(db.url)
    first = summary(cli("score"))
    expected = {str(k) for k in new} | {str(relabelled)}
    assert (first["records"], first["scored"], first["skipped"]) == (5, 5, 0)
    assert expected <= set(scored_keys(db.url, champion_id))
    again = summary(cli("score"))
    assert (again["records"], again["scored"]) == (0, 0)
    assert champion(db.url) == before


def test_edited_labelled_and_deleted_records_leave_the_view(db: Database) -> None:
    champion_id, _ = champion(db.url)
    # Every score is at or above a threshold of 0: each scored record is flagged.
    execute(db.url, sa.text("UPDATE anomdet_model_versions SET threshold = 0 "
                            "WHERE id = :v").bindparams(v=champion_id))
    add_unlabelled(db.url, {9101: "cache 9101 refreshed", 9102: "payment 9102 settled",
                            9103: "user 9103 signed in from the office"})
    assert summary(cli("score"))["flagged"] == 3
    view = flagged_view(db.url)
    assert {k: view[k] for k in ("9101", "9102", "9103")} == {
        "9101": "cache 9101 refreshed", "9102": "payment 9102 settled",
        "9103": "user 9103 signed in from the office"}
    table = records(db.url)
    execute(db.url, table.update().where(table.c.id == 9101).values(text="disk 9101 on fire"),
            table.update().where(table.c.id == 9102).values(label=1),
            table.delete().where(table.c.id == 9103))
    # At once, before any scoring, the labelled and the deleted record leave the view; so
    # does the edited one on PostgreSQL, whose view compares the text's md5. SQLite has no
    # hash function built in: there the next scoring run retires the old flag.
    shown = set(flagged_view(db.url))
    assert not {"9102", "9103"} & shown
    assert ("9101" in shown) == db.url.startswith("sqlite")
    rescored = summary(cli("score"))
    assert (rescored["records"], rescored["scored"]) == (1, 1)
    assert flagged_view(db.url)["9101"] == "disk 9101 on fire"
    assert not {"9102", "9103"} & set(flagged_view(db.url))


def _keys(kind: str, n: int) -> tuple[list[Any], list[Any]]:
    """`n` ids of the kind for the toy records, and two new ids sorting first and last."""
    if kind == "uuid":
        return ([uuid.UUID(int=(i * 0x9E3779B97F4A7C15) % 2**128) for i in range(1, n + 1)],
                [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)])
    if kind == "text":
        return [f"{'k' * 300}-{i:04d}" for i in range(n)], ["aaa-new", "zzz-" + "x" * 400]
    return ([(INT64[1] - i * 2**54) * (1 if i % 2 else -1) for i in range(1, n + 1)],
            [INT64[0], INT64[1]])


KEY_TYPES = {"uuid": sa.Uuid(), "text": sa.Text(), "bigint": sa.BigInteger()}


@pytest.mark.parametrize("kind", list(KEY_TYPES))
def test_keys_of_any_type_end_to_end(db: Database, kind: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rows, (first, last) = toy_rows(), _keys(kind, ROWS)[1]
    keys = _keys(kind, ROWS)[0]
    create_events(db.url, [sa.Column("id", KEY_TYPES[kind], primary_key=True,
                                     autoincrement=False),
                           sa.Column("text", sa.Text), sa.Column("label", sa.SmallInteger)],
                  [{**r, "id": k} for r, k in zip(rows, keys, strict=True)])
    map_records(monkeypatch, table="events", timestamp_column="")
    monkeypatch.setenv("ANOMDET_MODEL_NAME", "events")
    trained = cli("retrain")
    assert trained.exit_code == 0 and "decision: promoted" in trained.output, trained.output
    version_id, _ = champion(db.url, "events")
    unlabelled = sum(r["label"] is None for r in rows)
    assert len(scored_keys(db.url, version_id)) == unlabelled
    events = sa.Table("events", sa.MetaData(), autoload_with=get_engine(db.url))
    with get_engine(db.url).connect() as conn:
        as_text = set(conn.execute(sa.select(sa.cast(events.c.id, sa.Text))).scalars())
    assert set(scored_keys(db.url, version_id)) <= as_text
    assert set(flagged_view(db.url, "events")) <= as_text
    add_unlabelled(db.url, {first: "payment settled on time", last: "cache refreshed"},
                   "events", KEY_TYPES[kind])
    found = summary(cli("score"))
    assert (found["records"], found["scored"]) == (2, 2)
    assert len(scored_keys(db.url, version_id)) == unlabelled + 2
    assert champion(db.url, "events")[0] == version_id


def test_a_table_without_a_key_scores_each_identifiable_record_once(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = toy_rows()
    extra = [{"id": None, "text": "no id at all", "label": None},
             {"id": None, "text": "no id either", "label": None},
             {"id": 5000, "text": "one of two fives", "label": None},
             {"id": 5000, "text": "the other five", "label": None},
             {"id": 5001, "text": "a five thousand and one", "label": None}]
    create_events(db.url, [sa.Column("id", sa.BigInteger), sa.Column("text", sa.Text),
                           sa.Column("label", sa.SmallInteger)], rows + extra)
    map_records(monkeypatch, table="events", timestamp_column="")
    monkeypatch.setenv("ANOMDET_MODEL_NAME", "events")
    trained = cli("retrain")
    assert trained.exit_code == 0 and "decision: promoted" in trained.output, trained.output
    version_id, _ = champion(db.url, "events")
    keys = set(scored_keys(db.url, version_id))
    unlabelled = {str(r["id"]) for r in rows if r["label"] is None}
    assert keys == unlabelled | {"5001"}, "NULL and shared ids are never scored"
    assert not any("." in k for k in keys), "ids must never turn into floats"
    after = summary(cli("score"))
    assert (after["records"], after["scored"], after["skipped"], after["unkeyed"]) == (4, 0, 0, 4)
    assert sorted(after["unkeyed_example_ids"]) == ["5000", "5000", "NULL", "NULL"]


# --- 2. imports that never overwrite ------------------------------------------------------------

BIGINT_FIX = "records.id is BIGINT: write ids as digits only, like 2 (not 2.0 or 1e3)"
REFUSED = {
    "beyond int64": (
        "id,text\n1,fine\n18446744073709551615,too big\n9223372036854775808,just too big\n",
        "column id is outside the range of records.id on line(s) 3, 4 "
        "(e.g. '18446744073709551615', '9223372036854775808'); "
        "BIGINT holds -9223372036854775808 to 9223372036854775807"),
    "float beside an exact id": (
        "id,text\n9007199254740993,exact\n2.0,a float\n",
        f"column id is not a whole number on line(s) 3 (e.g. '2.0'); {BIGINT_FIX}"),
    "exponent": ("id,text\n1e3,an exponent\n",
                 f"column id is not a whole number on line(s) 2 (e.g. '1e3'); {BIGINT_FIX}"),
    "text id into an integer key": (
        "id,text\naaa-new,a text id\n",
        f"column id is not a whole number on line(s) 2 (e.g. 'aaa-new'); {BIGINT_FIX}"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_import_refuses_ids_the_key_cannot_hold(db: Database, case: str,
                                                tmp_path: Path) -> None:
    content, detail = REFUSED[case]
    path = tmp_path / "records.csv"
    path.write_text(content)
    add_unlabelled(db.url, {9007199254740992: "the neighbour"})
    before = state(db.url)
    said = message(cli("import-csv", str(path)))
    assert said.strip() == f"error: {path}: nothing imported; {detail}", said
    assert_unchanged(before, db.url)


def test_import_keeps_a_big_id_exact(db: Database, tmp_path: Path) -> None:
    add_unlabelled(db.url, {9007199254740992: "the neighbour"})
    path = tmp_path / "records.csv"
    path.write_text("id,text\n9007199254740993,exact\n")
    rows_before, champion_before = count(db.url, "records"), champion(db.url)
    result = cli("import-csv", str(path))
    assert result.exit_code == 0, result.output
    with get_engine(db.url).connect() as conn:
        texts = dict(conn.execute(sa.text(
            "SELECT id, text FROM records WHERE id >= 9007199254740992")).all())
    assert texts == {9007199254740992: "the neighbour", 9007199254740993: "exact"}
    assert count(db.url, "records") == rows_before + 1 and champion(db.url) == champion_before


def test_import_puts_text_ids_into_a_text_key_as_they_are(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    create_events(db.url, [sa.Column("id", sa.Text, primary_key=True),
                           sa.Column("text", sa.Text), sa.Column("label", sa.SmallInteger)],
                  [{"id": "7", "text": "seven", "label": 0}])
    map_records(monkeypatch, table="events", timestamp_column="")
    long_id = "x" * 300
    path = tmp_path / "events.csv"
    path.write_text(f"id,text,label\naaa-new,a new one,\n007,zero zero seven,1\n"
                    f"{long_id},a long id,\n")
    champion_before = champion(db.url)
    result = cli("import-csv", str(path))
    assert result.exit_code == 0, result.output
    with get_engine(db.url).connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT id, text FROM events")).all())
    assert stored == {"7": "seven", "aaa-new": "a new one", "007": "zero zero seven",
                      long_id: "a long id"}
    assert champion(db.url) == champion_before
