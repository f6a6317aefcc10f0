"""The database layer on SQLite and PostgreSQL: migrations, the one-champion rule,
compare-and-set, idempotent flags, the view, and the records mapping."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from db import repository as repo
from db.engine import get_engine, migrate, session_scope
from db.models import ScoreRow
from db.records import (
    ensure_records_table,
    iter_unlabelled,
    read_labelled,
    record_key,
    reflect_records_table,
    text_hash,
    unscored_chunks,
    upsert_records,
)
from tests.configs import records_mapping
from tests.versions import promote

MAPPING = records_mapping()


def _version(**over: object) -> dict:
    fields = {"model_name": "m", "base_model": "tiny-random", "artifact_uri": "/tmp/x",
              "weights_sha256": "0" * 64, "data_fingerprint": "f" * 64,
              "hyperparameters": {"epochs": 1}, "metrics": {"f1": 0.9}, "threshold": 0.5}
    return {**fields, **over}


@pytest.fixture
def engine(db_url: str) -> sa.Engine:
    engine = get_engine(db_url)
    migrate(engine)
    table = ensure_records_table(engine, MAPPING)
    frame = pd.DataFrame({"id": range(1, 11), "text": [f"text {i}" for i in range(1, 11)],
                          "label": pd.array([0, 1, 0, 0, None, None, None, 1, 0, None],
                                            dtype="Int64")})
    with engine.begin() as conn:
        upsert_records(conn, table, MAPPING, frame)
        repo.ensure_flagged_view(conn, table, MAPPING)
    return engine


def test_migrations_are_idempotent_and_create_the_tables(engine: sa.Engine) -> None:
    migrate(engine)
    names = set(sa.inspect(engine).get_table_names())
    assert {"anomdet_model_versions", "anomdet_runs", "anomdet_flags"} <= names
    assert "anomdet_flagged" in sa.inspect(engine).get_view_names()


def test_database_allows_one_champion_per_model(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        promote(session, expected_champion_id=None, **_version())
    from db.models import ModelVersion

    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(ModelVersion(status="champion", version=2, **_version()))
        session.flush()
    with session_scope(engine) as session:
        session.add(ModelVersion(status="champion", version=1, **_version(model_name="other")))


def test_promotion_is_compare_and_set(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        v1 = promote(session, expected_champion_id=None,
                     flags=[{"record_id": 5, "score": 0.9, "threshold": 0.5}],
                     **_version())
    # A run that evaluated against "no champion" must not promote now.
    with pytest.raises(repo.ChampionChanged), session_scope(engine) as session:
        promote(session, expected_champion_id=None, **_version())
    # A run that evaluated against a stale champion id must not promote either.
    with pytest.raises(repo.ChampionChanged), session_scope(engine) as session:
        promote(session, expected_champion_id=v1.id + 100,
                flags=[{"record_id": 6, "score": 0.8, "threshold": 0.5}],
                **_version())
    with session_scope(engine) as session:
        champion = repo.get_champion(session=session, model_name="m")
        assert champion.id == v1.id
        assert repo.count_flags(session=session) == 1
        assert len(repo.list_versions(session=session, model_name="m")) == 1
    with session_scope(engine) as session:
        v2 = promote(session, expected_champion_id=v1.id, **_version())
    with session_scope(engine) as session:
        statuses = {v.version: v.status for v in repo.list_versions(session=session,
                                                                    model_name="m")}
        assert statuses == {1: "retired", 2: "champion"}
        assert repo.get_champion(session=session, model_name="m").id == v2.id


def _flag_rows(engine: sa.Engine, scores: dict[int, float]) -> list[dict]:
    """Flag rows for record ids, each with the hash of the record's current text."""
    with engine.connect() as conn:
        table = reflect_records_table(conn, MAPPING)
        hashes = dict(conn.execute(sa.select(record_key(table, MAPPING),
                                             text_hash(table.c.text))).all())
    return [{"record_id": i, "score": s, "threshold": 0.5, "text_hash": hashes[str(i)]}
            for i, s in scores.items()]


def test_flags_are_idempotent_and_the_view_follows_the_champion(engine: sa.Engine) -> None:
    rows = _flag_rows(engine, {5: 0.9, 7: 0.7})
    with session_scope(engine) as session:
        v1 = promote(session, expected_champion_id=None, flags=rows, **_version())
    with session_scope(engine) as session:
        assert repo.insert_flags(session=session, model_version_id=v1.id, rows=rows) == 0
        assert repo.count_flags(session=session) == 2
        view = repo.flagged_rows(session=session)
    assert [(r["record_id"], r["text"]) for r in view] == [("5", "text 5"), ("7", "text 7")]
    with session_scope(engine) as session:
        v2 = promote(session, expected_champion_id=v1.id, flags=[rows[1]], **_version())
    with session_scope(engine) as session:
        view = repo.flagged_rows(session=session)
        assert [(r["record_id"], r["model_version"]) for r in view] == [("7", 2)]
        repo.set_champion(session=session, model_name="m", version=1,
                          expected_champion_id=v2.id)
    with session_scope(engine) as session:
        assert {r["record_id"] for r in repo.flagged_rows(session=session)} == {"5", "7"}


def test_failed_transaction_leaves_no_trace(engine: sa.Engine) -> None:
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        promote(session, expected_champion_id=None,
                flags=[{"record_id": 1, "score": 0.9, "threshold": 0.5}],
                **_version())
        raise RuntimeError("fails after the flags were written")
    with session_scope(engine) as session:
        assert repo.get_champion(session=session, model_name="m") is None
        assert repo.count_flags(session=session) == 0


def test_runs_record_their_decisions(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        run = repo.start_run(session=session, model_name="m", parameters={"epochs": 1})
    with session_scope(engine) as session:
        repo.finish_run(session=session, run_id=run.id, state="completed", decision="rejected",
                        reason="no better", challenger_metrics={"f1": 0.5})
    with session_scope(engine) as session:
        [latest] = repo.recent_runs(session=session, model_name="m")
        assert (latest.state, latest.decision, latest.reason) == ("completed", "rejected",
                                                                  "no better")
        assert latest.ended_at is not None
        with pytest.raises(ValueError, match="no column"):
            repo.update_run(session=session, run_id=run.id, nonsense=1)


def test_a_run_records_progress_then_its_ending(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        run = repo.start_run(session=session, model_name="m")
    with session_scope(engine) as session:
        repo.record_progress(session=session, run_id=run.id, progress=repo.RunProgress(
            test_rows=40, details={"checks": ["floor"]}))
        # A later step adds its findings: what it leaves None keeps the earlier value.
        repo.record_progress(session=session, run_id=run.id, progress=repo.RunProgress(
            challenger_metrics={"f1": 0.7}, details={"training": [1]}))
        during = repo.recent_runs(session=session, model_name="m")[0]
        assert (during.state, during.ended_at, during.test_rows) == ("running", None, 40)
        assert during.details == {"checks": ["floor"], "training": [1]}
    with session_scope(engine) as session:
        repo.end_run(session=session, run_id=run.id, ending=repo.RunEnding(
            state="completed", decision="promoted", reason="better", challenger_version_id=3))
        [ended] = repo.recent_runs(session=session, model_name="m")
        assert (ended.state, ended.decision, ended.reason) == ("completed", "promoted", "better")
        assert ended.challenger_version_id == 3 and ended.ended_at is not None
        assert ended.challenger_metrics == {"f1": 0.7} and ended.test_rows == 40


@pytest.mark.parametrize(("state", "decision", "message"), [
    ("running", "promoted", "completed or failed"), ("completed", "maybe", "unknown run decision")])
def test_a_run_ends_only_in_a_final_state_with_a_known_decision(
        state: str, decision: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        repo.RunEnding(state=state, decision=decision, reason="x")  # type: ignore[arg-type]


def test_records_are_read_by_mapping_in_chunks(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        table = reflect_records_table(conn, MAPPING)
        labelled = read_labelled(conn, table, MAPPING, chunk_size=3)
        chunks = list(iter_unlabelled(conn, table, MAPPING, chunk_size=2))
        from_seven = list(iter_unlabelled(conn, table, MAPPING, chunk_size=2,
                                          id_range=(7, None)))
    assert labelled["id"].tolist() == [1, 2, 3, 4, 8, 9]
    assert list(labelled.columns) == ["id", "text", "label", "created_at"]
    assert [c["id"].tolist() for c in chunks] == [[5, 6], [7, 10]]
    assert [c["key"].tolist() for c in chunks] == [["5", "6"], ["7", "10"]]
    assert [c["id"].tolist() for c in from_seven] == [[7, 10]]


def test_a_custom_mapping_is_checked_against_the_schema(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE events (event_id INTEGER PRIMARY KEY, body TEXT, "
                             "is_bad INTEGER)"))
        conn.execute(sa.text("INSERT INTO events VALUES (1, 'a', 0), (2, 'b', NULL)"))
    mapping = records_mapping(table="events", id_column="event_id", text_column="body",
                              label_column="is_bad", timestamp_column=None)
    with engine.connect() as conn:
        table = reflect_records_table(conn, mapping)
        assert read_labelled(conn, table, mapping)["text"].tolist() == ["a"]
        with pytest.raises(ValueError, match="lacks the mapped text column 'message'"):
            reflect_records_table(conn, replace(mapping, text_column="message"))
        with pytest.raises(ValueError, match="'nope' does not exist"):
            reflect_records_table(conn, records_mapping(table="nope"))


@pytest.mark.parametrize("name", ["records; DROP TABLE x", "a b", "1abc", "x\"y", ""])
def test_unsafe_names_are_refused_before_any_sql(name: str) -> None:
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        records_mapping(table=name)
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        records_mapping(text_column=name)


def test_json_fields_store_nan_as_null(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        run = repo.start_run(session=session, model_name="m")
        repo.update_run(session=session, run_id=run.id,
                        challenger_metrics={"f1": 0.5, "roc_auc": float("nan")})
    with session_scope(engine) as session:
        [latest] = repo.recent_runs(session=session, model_name="m")
        assert latest.challenger_metrics == {"f1": 0.5, "roc_auc": None}


def test_bulk_flags_read_back_exactly_and_count_only_new_rows(engine: sa.Engine) -> None:
    from datetime import UTC, datetime

    from db.models import Flag

    stamp = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    rows = [{"record_id": i, "score": 0.5 + i / 100, "threshold": 0.5, "flagged_at": stamp}
            for i in range(1, 6)]
    with session_scope(engine) as session:
        version = promote(session, expected_champion_id=None, **_version())
        assert repo.insert_flags(session=session, model_version_id=version.id,
                                 rows=rows[:3], batch_size=2) == 3
        # Two of these exist already: only the new ones count, nothing is doubled.
        assert repo.insert_flags(session=session, model_version_id=version.id,
                                 rows=rows[1:], batch_size=2) == 2
    with session_scope(engine) as session:
        stored = session.scalars(sa.select(Flag).order_by(Flag.record_id)).all()
        assert [(f.record_id, f.score, f.threshold, f.run_id) for f in stored] == [
            (str(i), 0.5 + i / 100, 0.5, None) for i in range(1, 6)]
        # Timestamps come back as the same instant (SQLite returns them naive, in UTC).
        assert {f.flagged_at.replace(tzinfo=UTC) for f in stored} == {stamp}


@pytest.mark.parametrize("label_type", [sa.SmallInteger(), sa.String(3)])
def test_a_capped_read_is_a_stratified_sample_drawn_by_the_database(
        db_url: str, label_type: sa.types.TypeEngine) -> None:
    engine = get_engine(db_url)
    table = sa.Table("events", sa.MetaData(), sa.Column("id", sa.BigInteger, primary_key=True),
                     sa.Column("text", sa.Text), sa.Column("label", label_type))
    table.create(engine)
    text_labels = isinstance(label_type, sa.String)
    labels = [1 if i % 10 == 0 else 0 for i in range(1000)] + [7, 7, 7] + [None] * 5
    with engine.begin() as conn:
        conn.execute(table.insert(), [
            {"id": i * 3 - 1000, "text": f"event {i}",
             "label": None if y is None else (str(y) if text_labels else y)}
            for i, y in enumerate(labels)])
    mapping = records_mapping(table="events", timestamp_column=None)
    with engine.connect() as conn:
        events = reflect_records_table(conn, mapping)

        def read(**kwargs: object) -> pd.DataFrame:
            return read_labelled(conn, events, mapping, **kwargs)

        sampled, again, other = read(sample=200, seed=1), read(sample=200, seed=1), read(
            sample=200, seed=2)
        whole, roomy = read(), read(sample=5000, seed=1)
    counts = sampled["label"].value_counts().to_dict()
    # Each class keeps its share; labels that are neither class all stay, for validation.
    assert {int(k): v for k, v in counts.items()} == {0: 180, 1: 20, 7: 3}
    assert sampled["id"].tolist() == again["id"].tolist(), "the same rows for the same seed"
    assert set(sampled["id"]) != set(other["id"])
    assert len(whole) == len(roomy) == 1003


def test_a_retrain_is_under_way_while_its_row_is_running_and_recent(engine: sa.Engine) -> None:
    since = datetime.now(UTC) - timedelta(minutes=5)
    with session_scope(engine) as session:
        assert repo.running_retrain(session=session, model_name="m", started_after=since) is None
        run = repo.start_run(session=session, model_name="m")
        repo.start_run(session=session, model_name="m", kind="rollback")
        repo.start_run(session=session, model_name="other")
    with session_scope(engine) as session:
        assert repo.running_retrain(session=session, model_name="m", started_after=since) == run.id
        later = datetime.now(UTC) + timedelta(minutes=1)
        assert repo.running_retrain(session=session, model_name="m", started_after=later) is None
        repo.finish_run(session=session, run_id=run.id, state="failed", decision="failed",
                        reason="stopped")
    with session_scope(engine) as session:
        assert repo.running_retrain(session=session, model_name="m", started_after=since) is None


def test_flags_since_a_time_are_the_versions_highest_first(engine: sa.Engine) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    with session_scope(engine) as session:
        v1 = promote(session, expected_champion_id=None,
                     flags=_flag_rows(engine, {5: 0.9, 7: 0.7, 10: 0.8}), **_version())
    with session_scope(engine) as session:
        number, rows = repo.flags_since(session=session, version_id=v1.id, since=before, limit=2)
        assert (number, [(r["record_id"], r["text"]) for r in rows]) == (
            1, [("5", "text 5"), ("10", "text 10")])
        later = datetime.now(UTC) + timedelta(minutes=1)
        assert repo.flags_since(session=session, version_id=v1.id, since=later) == (1, [])
        assert repo.flags_since(session=session, version_id=v1.id + 1, since=before) == (None, [])


def test_a_run_registers_one_candidate_however_often_it_tries(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    def sessions() -> object:
        return session_scope(engine)

    with session_scope(engine) as session:
        run_id = repo.start_run(session=session, model_name="m").id
        assert repo.pending_promotion(session=session, model_name="m") is None
    register, tries = repo.register_candidate, []

    def taken_once(**fields: object) -> object:
        tries.append(1)
        if len(tries) == 1:  # a concurrent run took the number: the next try sees it
            raise repo.VersionNumberTaken("taken")
        return register(**fields)

    monkeypatch.setattr(repo, "register_candidate", taken_once)
    first = repo.register_run_candidate(sessions, run_id=run_id, **_version())
    again = repo.register_run_candidate(sessions, run_id=run_id, **_version())
    assert (again.id, again.version, first.status, len(tries)) == (first.id, 1, "candidate", 2)
    with session_scope(engine) as session:
        pending = repo.pending_promotion(session=session, model_name="m")
    assert (pending.version_id, pending.run_id, pending.run_state) == (first.id, run_id, "running")


def test_registering_gives_up_when_every_number_is_taken(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    tries = []

    def always_taken(**_fields: object) -> None:
        tries.append(1)
        raise repo.VersionNumberTaken("taken")

    monkeypatch.setattr(repo, "register_candidate", always_taken)
    with pytest.raises(repo.VersionNumberTaken, match="could not number"):
        repo.register_run_candidate(lambda: session_scope(engine), **_version())
    assert len(tries) == repo.REGISTER_ATTEMPTS


def test_kept_scores_leave_the_unscored_chunks(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        version_id = repo.register_candidate(session=session, **_version()).id
    with unscored_chunks(engine, MAPPING, version_id=version_id, id_range=(6, None),
                         chunk_size=2) as chunks:
        frames = list(chunks)
    # Unlabelled are ids 5, 6, 7 and 10; the range starts at 6.
    assert [list(f["key"]) for f in frames] == [["6", "7"], ["10"]]
    rows = [ScoreRow(key, 0.9 if key == "7" else 0.1, digest)
            for f in frames for key, digest in zip(f["key"], f["text_hash"], strict=True)]
    assert repo.keep_scores(engine, model_version_id=version_id, rows=rows, threshold=0.5) == 1
    with unscored_chunks(engine, MAPPING, version_id=version_id, id_range=None,
                         chunk_size=2) as chunks:
        assert [list(f["key"]) for f in chunks] == [["5"]]
