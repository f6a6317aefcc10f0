"""Reviewers' labels on SQLite and PostgreSQL: each served version's production precision
(`anomdet_version_quality`), the labelling queue (`anomdet_label_queue`) and the count of
labels the champion never trained on."""

from __future__ import annotations

import math
import uuid

import pytest
import sqlalchemy as sa
from scipy.stats import binomtest

from db import repository as repo
from db.engine import get_engine, migrate, session_scope
from db.feedback import (
    HIGH_SCORE_SAMPLE,
    NEAR_THRESHOLD,
    ensure_feedback_views,
    label_news,
    label_queue,
    version_quality,
)
from db.models import ModelVersion, Run
from db.records import iter_unlabelled, reflect_records_table
from tests.db.test_scores import EVENTS, _events, _version

QUALITY = "SELECT * FROM anomdet_version_quality ORDER BY model_version"
QUEUE = "SELECT * FROM anomdet_label_queue ORDER BY rank"


def _score(engine: sa.Engine, version_id: int, score_of, threshold: float = 0.5) -> None:
    """Score every unlabelled event with `score_of(key)` as `version_id` (flags included)."""
    with engine.connect() as conn:
        table = reflect_records_table(conn, EVENTS)
        rows = [repo.ScoreRow(k, score_of(k), h) for c in iter_unlabelled(conn, table, EVENTS)
                for k, h in zip(c["key"], c["text_hash"], strict=True)]
    with session_scope(engine) as session:
        repo.write_scores(session=session, model_version_id=version_id, rows=rows,
                          threshold=threshold)


def _views(engine: sa.Engine, sample_every: int = 5) -> sa.Table:
    with engine.begin() as conn:
        table = reflect_records_table(conn, EVENTS)
        ensure_feedback_views(conn, table, EVENTS, sample_every)
    return table


def _label(engine: sa.Engine, ids: list[object], value: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET label = :y WHERE id = :id"),
                     [{"y": value, "id": i} for i in ids])


def test_reviewed_flags_give_each_version_its_precision(db_url: str) -> None:
    engine = get_engine(db_url)
    migrate(engine)
    _events(engine, sa.BigInteger(), list(range(1, 61)))
    old = _version(engine, 1, status="retired")
    _score(engine, old, lambda k: 0.9 if int(k) <= 30 else 0.1)  # flags 1..30
    new = _version(engine, 2, status="champion")
    _score(engine, new, lambda k: 0.9 if int(k) > 20 else 0.1)  # flags 21..60
    hidden = _version(engine, 3, status="candidate")
    _score(engine, hidden, lambda k: 0.9)
    _views(engine)
    _label(engine, [1, 2, 3, 4, 21, 22, 23, 41, 42, 43, 44, 45], 1)  # confirmed
    _label(engine, [5, 6, 46, 47], 0)  # dismissed
    _label(engine, [15], 1)  # not a flag of v2, and v1's confirmed
    with engine.begin() as conn:  # a flagged record whose text changed: not a verdict on it
        conn.execute(sa.text("UPDATE events SET text = 'edited', label = 0 WHERE id = 48"))
    with session_scope(engine) as session:  # as each scoring run does first
        records = reflect_records_table(session.connection(), EVENTS)
        # v2's flag of 48 is marked (v1 never flagged it; v3's candidate flags all were).
        assert repo.retire_changed_flags(session=session, records=records,
                                         mapping=EVENTS) == (2, 0)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text(QUALITY))]
    assert [(r["model_version"], r["status"]) for r in rows] == [(1, "retired"), (2, "champion")]
    v1, v2 = rows
    # v1 flagged 1..30: confirmed 1-4, 15, 21-23; dismissed 5, 6.
    assert (v1["flags"], v1["reviewed"], v1["confirmed"], v1["dismissed"]) == (30, 10, 8, 2)
    # v2 flagged 21..60: confirmed 21-23, 41-45; dismissed 46, 47 (48's text changed).
    assert (v2["flags"], v2["reviewed"], v2["confirmed"], v2["dismissed"]) == (40, 10, 8, 2)
    assert v2["reviewed_share"] == pytest.approx(10 / 40)
    for row in (v1, v2):
        interval = binomtest(row["confirmed"], row["reviewed"]).proportion_ci(method="wilson")
        assert row["precision"] == pytest.approx(row["confirmed"] / row["reviewed"])
        assert row["precision_low"] == pytest.approx(interval.low)
        assert row["precision_high"] == pytest.approx(interval.high)
    with session_scope(engine) as session:
        table = reflect_records_table(session.connection(), EVENTS)
        read = version_quality(session, table, EVENTS, "m")
    assert read[2]["confirmed"] == 8 and set(read) == {1, 2}


def test_precision_is_empty_until_a_flag_is_reviewed_and_reads_text_labels(db_url: str) -> None:
    engine = get_engine(db_url)
    migrate(engine)
    table = sa.Table("events", sa.MetaData(),
                     sa.Column("id", sa.String(36), primary_key=True),
                     sa.Column("text", sa.Text), sa.Column("label", sa.String(8)))
    table.create(engine)
    keys = [str(uuid.UUID(int=n)) for n in range(1, 11)]
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": k, "text": f"line {k}"} for k in keys])
    version = _version(engine)
    _score(engine, version, lambda k: 0.8)
    _views(engine)
    with engine.connect() as conn:
        [row] = conn.execute(sa.text(QUALITY)).mappings()
    assert (row["flags"], row["reviewed"], row["precision"], row["precision_low"]) == (
        10, 0, None, None)
    _label(engine, keys[:3], "1")
    _label(engine, keys[3:4], " 0")  # not a class as stored: not a verdict
    _label(engine, keys[4:5], "0")
    with engine.connect() as conn:
        [row] = conn.execute(sa.text(QUALITY)).mappings()
    assert (row["reviewed"], row["confirmed"], row["dismissed"]) == (4, 3, 1)


def test_queue_puts_uncertain_distinct_texts_first_with_a_sample_of_high_scores(
    db_url: str,
) -> None:
    engine = get_engine(db_url)
    migrate(engine)
    _events(engine, sa.BigInteger(), list(range(1, 101)))
    with engine.begin() as conn:  # one line repeated 20 times, as logs do
        conn.execute(sa.text("UPDATE events SET text = 'disk full' WHERE id > 80"))
    old = _version(engine, 1, status="retired")
    _score(engine, old, lambda k: 0.5)  # a retired version's scores are not the queue's
    version = _version(engine, 2, status="champion", threshold=0.6)
    # Scores spread over [0, 1): record n scores (n - 1) / 100; the repeated line 0.95.
    _score(engine, version, lambda k: 0.95 if int(k) > 80 else (int(k) - 1) / 100,
           threshold=0.6)
    _label(engine, [61], 0)  # labelled records leave the queue
    with engine.begin() as conn:  # and on PostgreSQL so do records whose text changed
        conn.execute(sa.text("UPDATE events SET text = 'changed' WHERE id = 60"))
    _views(engine, sample_every=4)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text(QUEUE))]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    keys = [r["record_id"] for r in rows]
    # SQLite's view cannot hash the text: the edited record waits for the next scoring run.
    hashes = engine.dialect.name == "postgresql"
    assert len(keys) == len(set(keys)) == 80 - 1 - hashes + 1  # 1..80 less 61; 'disk full'
    assert ("60" not in keys) == hashes and "61" not in keys
    [repeated] = [r for r in rows if r["text"] == "disk full"]
    assert repeated["copies"] == 20 and 81 <= int(repeated["record_id"]) <= 100
    assert {(r["model_version"], r["threshold"]) for r in rows} == {(2, 0.6)}
    near = [r for r in rows if r["reason"] == NEAR_THRESHOLD]
    sampled = [r for r in rows if r["reason"] == HIGH_SCORE_SAMPLE]
    distances = [abs(_logit(r["score"]) - _logit(r["threshold"])) for r in near]
    assert distances == sorted(distances)
    assert sampled and all(r["score"] >= r["threshold"] for r in sampled)
    # About every 4th place is a sample: a sampled text that is among the closest to the
    # threshold anyway keeps its closer place.
    ranks = [r["rank"] for r in sampled]
    assert ranks[0] <= 8 and all(b - a >= 2 for a, b in zip(ranks, ranks[1:], strict=False))
    assert 5 <= sum(1 for rank in ranks if rank <= 40) <= 10, ranks
    with engine.connect() as conn:
        table = reflect_records_table(conn, EVENTS)
        first = label_queue(conn, table, EVENTS, "m", sample_every=4, limit=5)
    assert [r["record_id"] for r in first] == keys[:5]


def test_label_news_counts_labels_the_champion_never_trained_on(db_url: str) -> None:
    engine = get_engine(db_url)
    migrate(engine)
    labels = [1 if n % 10 == 0 else 0 for n in range(40)] + [None] * 60
    _events(engine, sa.BigInteger(), list(range(1, 101)), labels=labels)
    with engine.connect() as conn:
        table = reflect_records_table(conn, EVENTS)
        first = label_news(conn, table, EVENTS, None)
    assert (first.labelled, first.new) == (40, 40)  # no champion: every label is new
    with session_scope(engine) as session:
        run = repo.start_run(session=session, model_name="m")
        repo.record_progress(session=session, run_id=run.id, progress=repo.RunProgress(
            details={"labels": first.to_dict()}))
        run_id = run.id
    version = _version(engine)
    with session_scope(engine) as session:
        session.get(ModelVersion, version).run_id = run_id
    _score(engine, version, lambda k: 0.2)
    _label(engine, [41, 42, 43], 1)  # reviewed: scored by the champion unlabelled
    with engine.begin() as conn:  # imported already labelled: the count grows by 5
        conn.execute(sa.text("INSERT INTO events (id, text, label) VALUES "
                             "(201, 'a', 0), (202, 'b', 0), (203, 'c', 1), (204, 'd', 0), "
                             "(205, 'e', 0)"))
    with session_scope(engine) as session:
        champion = session.get(ModelVersion, version)
        news = label_news(session.connection(), table, EVENTS, champion)
        assert session.get(Run, run_id).details["labels"]["labelled"] == 40
    assert (news.labelled, news.reviewed, news.labelled_at_training) == (48, 3, 40)
    assert news.new == 8
    with engine.begin() as conn:  # labels removed elsewhere: the reviewed ones still count
        conn.execute(sa.text("UPDATE events SET label = NULL WHERE id <= 10"))
    with session_scope(engine) as session:
        news = label_news(session.connection(), table, EVENTS, session.get(ModelVersion,
                                                                            version))
    assert (news.labelled, news.new) == (38, 3)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))
