"""Records tables of unusual shapes (a view, a composite key, ids without a type, a
BOOLEAN label) and reading a database's schema revision without writing to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from db.engine import NoDatabaseFile, get_engine, head_revision, migrate, schema_revision
from db.records import (
    ensure_records_table,
    iter_unlabelled,
    reflect_records_table,
    target_id_column,
    unkeyed_unlabelled,
)
from tests.configs import records_mapping
from tests.databases import only_on


def _execute(url: str, *statements: str) -> None:
    with get_engine(url).begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))


def test_a_view_is_read_but_never_written(db_url: str) -> None:
    _execute(db_url, "CREATE TABLE records_t (id BIGINT PRIMARY KEY, text TEXT, label SMALLINT)",
             "INSERT INTO records_t VALUES (1, 'a record', NULL)",
             "CREATE VIEW records AS SELECT * FROM records_t")
    mapping = records_mapping(timestamp_column=None)
    engine = get_engine(db_url)
    table = reflect_records_table(engine, mapping)
    with engine.connect() as conn:
        [frame] = list(iter_unlabelled(conn, table, mapping))
    assert frame["key"].tolist() == ["1"]
    for write in (ensure_records_table, target_id_column):
        with pytest.raises(ValueError, match="records 'records' is a view: anomdet reads"):
            write(engine, mapping)


def test_an_import_target_needs_its_id_unique_on_its_own(db_url: str) -> None:
    _execute(db_url, "CREATE TABLE records (tenant INTEGER NOT NULL, id BIGINT NOT NULL, "
                     "text TEXT, label SMALLINT, PRIMARY KEY (tenant, id))")
    with pytest.raises(ValueError, match=r"records.id is not unique on its own \(the primary "
                                         r"key is \(tenant, id\)\)"):
        target_id_column(get_engine(db_url), records_mapping(timestamp_column=None))
    _execute(db_url, "CREATE UNIQUE INDEX records_id_key ON records (id)")
    assert target_id_column(get_engine(db_url),
                            records_mapping(timestamp_column=None)).kind == "integer"


@only_on("sqlite")
def test_ids_that_write_as_one_key_are_unkeyed(db_url: str) -> None:
    _execute(db_url, "CREATE TABLE records (id PRIMARY KEY, text TEXT, label SMALLINT)",
             "INSERT INTO records VALUES (5000, 'an integer', NULL), ('5000', 'a text', NULL), "
             "(5001, 'alone', NULL)")
    mapping = records_mapping(timestamp_column=None)
    engine = get_engine(db_url)
    table = reflect_records_table(engine, mapping)
    with engine.connect() as conn:
        keys = [k for frame in iter_unlabelled(conn, table, mapping) for k in frame["key"]]
        assert keys == ["5001"]
        assert unkeyed_unlabelled(conn, table, mapping) == (2, ["5000", "5000"])


@only_on("postgresql")
def test_a_boolean_label_column_is_refused_by_name(db_url: str) -> None:
    _execute(db_url, "CREATE TABLE records (id BIGINT PRIMARY KEY, text TEXT, label BOOLEAN)")
    with pytest.raises(ValueError, match="label column records.label is BOOLEAN"):
        reflect_records_table(get_engine(db_url), records_mapping(timestamp_column=None))


def test_the_schema_revision_is_read_without_a_write(db_url: str) -> None:
    engine = get_engine(db_url)
    if engine.dialect.name == "sqlite":  # an empty file, as a new PostgreSQL database is
        Path(str(engine.url.database)).touch()
    assert schema_revision(engine) is None
    assert sa.inspect(engine).get_table_names() == []
    migrate(engine)
    assert schema_revision(engine) == head_revision()


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    with pytest.raises(NoDatabaseFile):
        schema_revision(get_engine(f"sqlite:///{path}"))
    assert not path.exists()
