"""`anomdet_flagged` is served by indexes: its top rows by score and one record's flag by
id are found without reading the whole records table, for every kind of key, and they
are the same rows as before."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from db import repository as repo
from db.engine import get_engine, migrate, session_scope
from db.records import iter_unlabelled, reflect_records_table
from db.repository import ensure_flagged_view
from tests.db.test_scores import EVENTS, _events, _version

ROWS = 3000
KEYS = {
    "bigint": (sa.BigInteger(), lambda n: n * 7 - 9000),
    "biggest bigint": (sa.BigInteger(), lambda n: 2**63 - 1 - n * 13),
    "text": (sa.String(40), lambda n: f"k-{n:05d}"),
    "uuid": (sa.Uuid(), lambda n: uuid.UUID(int=n * 104729 + 11)),
}
TOP = "SELECT record_id, text, score FROM anomdet_flagged ORDER BY score DESC LIMIT 10"
BY_ID = "SELECT record_id, text, score FROM anomdet_flagged WHERE record_id = :key"


def _flagged_events(url: str, kind: str) -> tuple[sa.Engine, dict[str, tuple[str, float]]]:
    """`events` with ROWS records, every third one flagged by the champion; the flags by
    key, with the text each was given for."""
    engine = get_engine(url)
    migrate(engine)
    id_type, make = KEYS[kind]
    _events(engine, id_type, [make(n) for n in range(ROWS)])
    version = _version(engine)
    with engine.connect() as conn:
        table = reflect_records_table(conn, EVENTS)
        chunk = next(iter_unlabelled(conn, table, EVENTS, chunk_size=ROWS))
    rows = [repo.ScoreRow(key, 0.5 + (n * 7919 % ROWS) / (2 * ROWS) if n % 3 == 0 else 0.1,
                          digest)
            for n, (key, digest) in enumerate(zip(chunk["key"], chunk["text_hash"], strict=True))]
    with session_scope(engine) as session:
        repo.write_scores(session=session, model_version_id=version, rows=rows, threshold=0.5)
    with engine.begin() as conn:
        ensure_flagged_view(conn, reflect_records_table(conn, EVENTS), EVENTS)
    texts = dict(zip(chunk["key"], chunk["text"], strict=True))
    return engine, {r.record_id: (texts[r.record_id], r.score) for r in rows if r.score >= 0.5}


def _check_rows(engine: sa.Engine, flagged: dict[str, tuple[str, float]]) -> str:
    """The view's top rows and one lookup are the flags expected; returns a key looked up."""
    expected = sorted(flagged.items(), key=lambda item: -item[1][1])[:10]
    key = expected[3][0]
    with engine.connect() as conn:
        top = conn.execute(sa.text(TOP)).all()
        one = conn.execute(sa.text(BY_ID), {"key": key}).all()
        missing = conn.execute(sa.text(BY_ID), {"key": "not-a-key"}).all()
    assert [(k, t) for k, t, _ in top] == [(k, t) for k, (t, _) in expected]
    assert [(k, t) for k, t, _ in one] == [(key, flagged[key][0])] and missing == []
    return key


@pytest.mark.postgres
@pytest.mark.parametrize("kind", list(KEYS))
def test_postgres_reads_the_view_through_indexes(postgres_url: str, kind: str) -> None:
    engine, flagged = _flagged_events(postgres_url, kind)
    key = _check_rows(engine, flagged)
    with engine.connect() as conn:
        # A table this small is cheaper to read whole; with sequential scans priced out,
        # the planner shows whether an index can serve each read at all. Reading the
        # records by CAST(id AS TEXT), as the view once did, no index could.
        conn.execute(sa.text("SET enable_seqscan = off"))
        conn.execute(sa.text("SET enable_sort = off"))
        top = "\n".join(conn.execute(sa.text("EXPLAIN " + TOP)).scalars())
        one = "\n".join(conn.execute(sa.text("EXPLAIN " + BY_ID.replace(":key", f"'{key}'")))
                        .scalars())
    for plan in (top, one):
        assert "Seq Scan on events" not in plan, plan
        assert "Index Scan using events_pkey on events" in plan, plan
    assert "Index Scan Backward using ix_anomdet_flags_score on anomdet_flags" in top, top
    assert "uq_anomdet_flags_record_version" in one, one


@pytest.mark.parametrize("kind", ["bigint", "text"])
def test_sqlite_reads_the_view_through_indexes(sqlite_url: str, kind: str) -> None:
    engine, flagged = _flagged_events(sqlite_url, kind)
    key = _check_rows(engine, flagged)
    with engine.connect() as conn:
        def plan(query: str) -> str:
            return "\n".join(row[-1] for row in conn.execute(
                sa.text("EXPLAIN QUERY PLAN " + query.replace(":key", f"'{key}'"))))
        top, one = plan(TOP), plan(BY_ID)
    for found in (top, one):
        assert "SCAN events" not in found, found
        assert ("SEARCH events USING INTEGER PRIMARY KEY" in found
                or "SEARCH events USING INDEX sqlite_autoindex_events_1" in found), found
    assert "SCAN anomdet_flags USING INDEX ix_anomdet_flags_score" in top, top
