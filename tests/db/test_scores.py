"""Kept scores on SQLite and PostgreSQL: work found by what a version has not scored,
for any id type or order; flags that follow their text; retention; the 0003 upgrade."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from db import repository as repo
from db.engine import get_engine, migrate, migrations_dir, session_scope
from db.records import (
    id_ranges,
    iter_unlabelled,
    record_key,
    reflect_records_table,
    text_hash,
    unkeyed_unlabelled,
)
from tests.configs import records_mapping

EVENTS = records_mapping(table="events", timestamp_column=None)


def _version(engine: sa.Engine, number: int = 1, status: str = "champion",
             threshold: float = 0.5) -> int:
    from db.models import ModelVersion

    with session_scope(engine) as session:
        version = ModelVersion(model_name="m", version=number, status=status,
                               base_model="tiny-random", artifact_uri="-", weights_sha256="-",
                               data_fingerprint="-", hyperparameters={}, metrics={},
                               threshold=threshold)
        session.add(version)
        session.flush()
        return version.id


def _events(engine: sa.Engine, id_type: sa.types.TypeEngine, ids: list[object],
            *, primary_key: bool = True, labels: list[int | None] | None = None) -> sa.Table:
    """A user's table `events` with ids of `id_type`, one unlabelled record per id."""
    table = sa.Table("events", sa.MetaData(),
                     sa.Column("id", id_type, primary_key=primary_key, nullable=not primary_key,
                               autoincrement=False),
                     sa.Column("text", sa.Text), sa.Column("label", sa.SmallInteger))
    table.create(engine)
    labels = labels or [None] * len(ids)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "text": f"event {n}", "label": y}
                                      for n, (i, y) in enumerate(zip(ids, labels, strict=True))])
    return table


def _work(engine: sa.Engine, version_id: int | None, chunk_size: int = 2,
          parts: int = 3) -> tuple[list[str], list[str], int]:
    """Keys found chunk by chunk, keys found range by range, and the planned count."""
    with engine.connect() as conn:
        table = reflect_records_table(conn, EVENTS)
        whole = [k for c in iter_unlabelled(conn, table, EVENTS, chunk_size=chunk_size,
                                            version_id=version_id) for k in c["key"]]
        ranges, count = id_ranges(conn, table, EVENTS, parts=parts, version_id=version_id)
        ranged = [k for r in ranges for c in iter_unlabelled(
            conn, table, EVENTS, chunk_size=chunk_size, id_range=r, version_id=version_id)
            for k in c["key"]]
    return whole, ranged, count


def _score_all(engine: sa.Engine, version_id: int, score: float = 0.9) -> None:
    with engine.connect() as conn:
        table = reflect_records_table(conn, EVENTS)
        rows = [repo.ScoreRow(k, score, h) for c in iter_unlabelled(
            conn, table, EVENTS, version_id=version_id) for k, h in zip(c["key"], c["text_hash"],
                                                                        strict=True)]
    with session_scope(engine) as session:
        repo.write_scores(session=session, model_version_id=version_id, rows=rows,
                          threshold=0.5)


KEYS = {
    "bigint": (sa.BigInteger(), [2**63 - 1, -(2**63), 0, -5, 7, 3]),
    "text": (sa.Text(), ["aaa-new", "b" * 300, "zzz", "007", "7", "Ä-ünï"]),
    "uuid": (sa.Uuid(), [uuid.UUID(int=i * 7919 + 1) for i in range(6)]),
}


@pytest.mark.parametrize("kind", list(KEYS))
def test_every_record_is_found_whatever_its_id_type(db_url: str, kind: str) -> None:
    engine = get_engine(db_url)
    migrate(engine)
    id_type, ids = KEYS[kind]
    _events(engine, id_type, ids)
    version = _version(engine)
    whole, ranged, count = _work(engine, version)
    assert count == len(ids) and len(set(whole)) == len(ids)
    assert sorted(ranged) == sorted(whole), "the ranges must cover every record once"
    _score_all(engine, version)
    assert _work(engine, version)[2] == 0, "scored records are not work again"
    with engine.connect() as conn:
        stored = set(conn.execute(sa.text("SELECT record_id FROM anomdet_scores")).scalars())
        keys = set(conn.execute(sa.select(record_key(reflect_records_table(conn, EVENTS),
                                                     EVENTS))).scalars())
    assert stored == keys and all(".0" not in k for k in stored)


def test_new_labelled_back_and_edited_records_are_work(db_url: str) -> None:
    engine = get_engine(db_url)
    migrate(engine)
    table = _events(engine, sa.BigInteger(), [10, 20, 30], labels=[None, 1, None])
    version = _version(engine)
    _score_all(engine, version)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": -1, "text": "older than all", "label": None}])
        conn.execute(table.update().where(table.c.id == 20).values(label=None))
        conn.execute(table.update().where(table.c.id == 30).values(text="edited"))
    whole, _, count = _work(engine, version)
    assert sorted(whole) == ["-1", "20", "30"] and count == 3


def test_ids_shared_or_missing_are_counted_not_scored(db_url: str) -> None:
    engine = get_engine(db_url)
    migrate(engine)
    # No key at all: NULL ids, and id 5 twice, straddling the chunk edges.
    _events(engine, sa.BigInteger(), [1, 5, 5, None, 6, None, 8], primary_key=False)
    version = _version(engine)
    whole, ranged, count = _work(engine, version, chunk_size=1, parts=4)
    assert whole == ["1", "6", "8"] and sorted(ranged) == sorted(whole) and count == 3
    with engine.connect() as conn:
        unkeyed, examples = unkeyed_unlabelled(conn, reflect_records_table(conn, EVENTS),
                                               EVENTS)
    assert unkeyed == 4 and sorted(examples) == ["5", "5", "NULL", "NULL"]


def _flag_keys(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT record_id, text FROM anomdet_flagged")).all())


def test_rescoring_an_edited_text_replaces_or_removes_its_flag(db_url: str) -> None:
    engine = get_engine(db_url)
    migrate(engine)
    table = _events(engine, sa.BigInteger(), [1, 2, 3])
    with engine.begin() as conn:
        repo.ensure_flagged_view(conn, reflect_records_table(conn, EVENTS), EVENTS)
    version = _version(engine)
    _score_all(engine, version)
    assert _flag_keys(engine) == {"1": "event 0", "2": "event 1", "3": "event 2"}
    with engine.begin() as conn:
        conn.execute(table.update().where(table.c.id == 1).values(text="new words"))
        conn.execute(table.update().where(table.c.id == 2).values(text="calm words"))
        conn.execute(table.update().where(table.c.id == 3).values(label=0))
    # A labelled record's flag goes at once; on PostgreSQL, whose view compares the
    # text's md5, so do flags given for another text.
    expected = {} if engine.dialect.name == "postgresql" else {"1": "new words",
                                                                 "2": "calm words"}
    assert _flag_keys(engine) == expected
    # A scoring run first marks the flags of changed texts: hidden on every database.
    with session_scope(engine) as session:
        records = reflect_records_table(session.connection(), EVENTS)
        assert repo.retire_changed_flags(session=session, records=records,
                                         mapping=EVENTS) == (2, 0)
    assert _flag_keys(engine) == {}
    with engine.connect() as conn:
        chunk = next(iter_unlabelled(conn, reflect_records_table(conn, EVENTS), EVENTS,
                                     version_id=version))
    rows = {k: h for k, h in zip(chunk["key"], chunk["text_hash"], strict=True)}
    assert set(rows) == {"1", "2"}
    with session_scope(engine) as session:
        written = repo.write_scores(session=session, model_version_id=version, threshold=0.5,
                                    rows=[repo.ScoreRow("1", 0.8, rows["1"]),
                                          repo.ScoreRow("2", 0.1, rows["2"])])
    assert written == 1
    assert _flag_keys(engine) == {"1": "new words"}
    with engine.connect() as conn:
        flags = dict(conn.execute(sa.text("SELECT record_id, score FROM anomdet_flags")).all())
    assert flags == {"1": 0.8, "3": 0.9}, "a flag below the threshold now is removed"


def test_old_versions_scores_are_pruned(db_url: str) -> None:
    engine = get_engine(db_url)
    migrate(engine)
    _events(engine, sa.BigInteger(), [1, 2])
    ids = [_version(engine, n, "retired") for n in (1, 2, 3)] + [_version(engine, 4)]
    for version in ids:
        _score_all(engine, version)
    with session_scope(engine) as session:
        assert repo.prune_scores(session=session, model_name="m", keep_versions=1) == 4
        kept = {v: repo.count_scores(session=session, model_version_id=v) for v in ids}
        assert repo.count_flags(session=session) == 8, "flags are history: never pruned"
    assert kept == {ids[0]: 0, ids[1]: 0, ids[2]: 2, ids[3]: 2}


def test_text_hash_is_what_the_sqlite3_shell_computes(sqlite_url: str) -> None:
    import hashlib

    engine = get_engine(sqlite_url)
    with engine.connect() as conn:
        value = conn.execute(sa.select(text_hash(sa.literal("héllo")))).scalar_one()
    assert value == hashlib.sha3_256("héllo".encode()).hexdigest()


def _upgrade_to(engine: sa.Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_upgrade_from_0002_keeps_the_view_its_grants_and_the_flags(db_url: str) -> None:
    engine = get_engine(db_url)
    _upgrade_to(engine, "0002")
    mapping = records_mapping()
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE records (id BIGINT PRIMARY KEY, text TEXT, "
                             "label SMALLINT, created_at TIMESTAMP)"))
        conn.execute(sa.text("INSERT INTO records (id, text) VALUES (1, 'a'), (2, 'b')"))
        conn.execute(sa.text(
            "INSERT INTO anomdet_model_versions (model_name, version, status, base_model, "
            "artifact_uri, weights_sha256, data_fingerprint, hyperparameters, metrics, "
            "threshold, created_at) VALUES ('m', 1, 'champion', 'b', '-', '-', '-', '{}', "
            "'{}', 0.5, CURRENT_TIMESTAMP)"))
        conn.execute(sa.text("INSERT INTO anomdet_flags (record_id, model_version_id, score, "
                             "threshold, flagged_at) VALUES ('1', 1, 0.9, 0.5, "
                             "CURRENT_TIMESTAMP)"))
        conn.execute(sa.text("CREATE VIEW anomdet_flagged AS SELECT f.record_id, r.text "
                             "FROM anomdet_flags f JOIN records r "
                             "ON CAST(r.id AS VARCHAR(255)) = f.record_id"))
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("DROP ROLE IF EXISTS anomdet_test_reader"))
            conn.execute(sa.text("CREATE ROLE anomdet_test_reader"))
            conn.execute(sa.text("GRANT SELECT ON anomdet_flagged TO anomdet_test_reader"))
    try:
        migrate(engine)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT * FROM anomdet_flagged")).all() == [("1", "a")]
            assert conn.execute(sa.text("SELECT count(*) FROM anomdet_scores")).scalar() == 0
            assert "anomdet_scoring_cursors" not in sa.inspect(conn).get_table_names()
            if engine.dialect.name == "postgresql":
                assert conn.execute(sa.text(
                    "SELECT has_table_privilege('anomdet_test_reader', 'anomdet_flagged', "
                    "'SELECT')")).scalar()
        with engine.begin() as conn:  # the long ids fit now
            conn.execute(sa.text("INSERT INTO anomdet_flags (record_id, model_version_id, "
                                 "score, threshold, flagged_at) VALUES (:r, 1, 0.9, 0.5, "
                                 "CURRENT_TIMESTAMP)"), {"r": "x" * 1000})
            repo.ensure_flagged_view(conn, reflect_records_table(conn, mapping), mapping)
        with engine.connect() as conn:  # a flag without a text hash is not shown
            assert conn.execute(sa.text("SELECT * FROM anomdet_flagged")).all() == []
    finally:
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.execute(sa.text("DROP VIEW IF EXISTS anomdet_flagged"))
                conn.execute(sa.text("DROP ROLE IF EXISTS anomdet_test_reader"))


@pytest.mark.skipif(not __import__("shutil").which("sqlite3"), reason="no sqlite3 shell here")
def test_the_sqlite3_shell_reads_the_view(sqlite_url: str) -> None:
    import subprocess

    engine = get_engine(sqlite_url)
    migrate(engine)
    _events(engine, sa.BigInteger(), [1, 2, 3])
    with engine.begin() as conn:
        repo.ensure_flagged_view(conn, reflect_records_table(conn, EVENTS), EVENTS)
    _score_all(engine, _version(engine))
    engine.dispose()
    path = sa.engine.make_url(sqlite_url).database
    shown = subprocess.run(["sqlite3", path, "SELECT record_id FROM anomdet_flagged "
                            "ORDER BY record_id"], capture_output=True, text=True, check=True)
    assert shown.stdout.split() == ["1", "2", "3"]


def test_a_record_without_text_is_kept_as_unscored_until_its_text_comes(db_url: str) -> None:
    engine = get_engine(db_url)
    migrate(engine)
    table = _events(engine, sa.BigInteger(), [1, 2])
    with engine.begin() as conn:
        conn.execute(table.update().where(table.c.id == 1).values(text=None))
    version = _version(engine)
    with engine.connect() as conn:
        [chunk] = iter_unlabelled(conn, reflect_records_table(conn, EVENTS), EVENTS,
                                  version_id=version)
    assert chunk["text"].tolist()[0] is None and chunk["text_hash"].tolist()[0] is None
    with session_scope(engine) as session:
        repo.write_scores(session=session, model_version_id=version, threshold=0.5, rows=[
            repo.ScoreRow(k, None if t is None else 0.7, h) for k, t, h in
            zip(chunk["key"], chunk["text"], chunk["text_hash"], strict=True)])
    assert _work(engine, version)[2] == 0
    with engine.begin() as conn:
        conn.execute(table.update().where(table.c.id == 1).values(text="now it has words"))
    assert _work(engine, version)[0] == ["1"]
