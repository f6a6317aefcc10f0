"""tasks.database: retries only on I/O and only for connection failures; what each task
reads and writes on a real (SQLite) database."""

from __future__ import annotations

import os
import socket

import pandas as pd
import pytest
import sqlalchemy as sa
from prefect.cache_policies import NO_CACHE

import tasks.database as td
from anomdet.settings import Settings
from db import repository as repo
from db.engine import get_engine, migrate, session_scope
from db.models import Run
from db.records import ensure_records_table, text_hash, upsert_records
from tests.configs import records_mapping
from tests.tasks.conftest import Recorder
from tests.versions import promote


@pytest.mark.parametrize(("task", "name", "retries"), [
    (td.prepare_database, "prepare database", 0),
    (td.start_run, "start run", 3),
    (td.record_progress, "record run progress", 3),
    (td.end_run, "end run", 3),
    (td.read_top_flagged, "read top flagged records", 3),
    (td.extract_labelled, "extract labelled records", 3),
])
def test_names_and_retries(task: object, name: str, retries: int) -> None:
    assert task.name == name and task.cache_policy is NO_CACHE
    assert task.retries == retries
    if retries:
        assert task.retry_delay_seconds == [2, 5, 15]
        assert task.retry_condition_fn is td.only_transient


class _State:
    def __init__(self, data: object) -> None:
        self.data = data


def test_only_connection_failures_are_retried() -> None:
    refused = sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    assert td.only_transient(None, None, _State(refused))
    assert not td.only_transient(None, None, _State(ValueError("bad label 7")))
    assert not td.only_transient(None, None, _State("a result, not a failure"))


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return Settings(database_url=sqlite_url, chunk_size=100)


def test_prepare_migrates_and_creates_the_view(settings: Settings) -> None:
    engine = get_engine(settings.database_url)
    ensure_records_table(engine, records_mapping())
    td.prepare_database.fn(settings)
    inspector = sa.inspect(engine)
    assert "anomdet_runs" in inspector.get_table_names()
    assert sorted(inspector.get_view_names()) == ["anomdet_flagged", "anomdet_label_queue",
                                                  "anomdet_version_quality"]


def test_prepare_refuses_a_missing_records_table(settings: Settings) -> None:
    with pytest.raises(ValueError, match="records"):
        td.prepare_database.fn(settings)


def test_start_run_records_this_process_and_closes_dead_ones(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = get_engine(settings.database_url)
    migrate(engine)
    host = socket.gethostname()
    with session_scope(engine) as session:
        dead = repo.start_run(session=session, model_name=settings.model_name,
                              process={"host": host, "pid": 0}).id
    warn = Recorder()
    monkeypatch.setattr(td, "get_run_logger", lambda: type("L", (), {"warning": warn})())
    run_id = td.start_run.fn(settings, "flow-run-1", {"epochs": 2})
    with session_scope(engine) as session:
        run, closed = session.get(Run, run_id), session.get(Run, dead)
        assert (run.state, run.flow_run_id, run.parameters) == ("running", "flow-run-1",
                                                                {"epochs": 2})
        assert run.details["process"] == {"host": host, "pid": os.getpid()}
        assert (closed.state, closed.decision) == ("failed", "failed")
    assert warn.call[0][1] == [dead]


def test_extract_reads_the_labelled_records_only(settings: Settings) -> None:
    engine = get_engine(settings.database_url)
    mapping = records_mapping()
    table = ensure_records_table(engine, mapping)
    frame = pd.DataFrame({"id": range(1, 251), "text": [f"t{i}" for i in range(1, 251)],
                          "label": pd.array([i % 2 if i <= 200 else None
                                             for i in range(1, 251)], dtype="Int64")})
    with engine.begin() as conn:
        upsert_records(conn, table, mapping, frame)
    labelled = td.extract_labelled.fn(settings)
    assert len(labelled) == 200 and {"id", "text", "label"} <= set(labelled.columns)
    assert sorted(labelled["id"]) == list(range(1, 201))
    # Capped training rows: the database draws enough that the train side (65% of the
    # split by default) holds the cap, half of each class as in the table.
    capped = settings.model_copy(update={"training": settings.training.model_copy(
        update={"max_train_rows": 52})})
    assert td.labelled_sample(capped) == 80
    sampled = td.extract_labelled.fn(capped)
    assert sampled["label"].value_counts().to_dict() == {0: 40, 1: 40}


def test_a_run_records_progress_then_ends(settings: Settings) -> None:
    engine = get_engine(settings.database_url)
    migrate(engine)
    with session_scope(engine) as session:
        run_id = repo.start_run(session=session, model_name=settings.model_name).id
    td.record_progress.fn(settings, run_id, repo.RunProgress(test_rows=12))
    with session_scope(engine) as session:
        assert (session.get(Run, run_id).state, session.get(Run, run_id).test_rows) == (
            "running", 12)
    td.end_run.fn(settings, run_id, repo.RunEnding(state="failed", decision="failed_validation",
                                                   reason="too few rows"))
    with session_scope(engine) as session:
        run = session.get(Run, run_id)
        assert (run.state, run.decision, run.reason) == ("failed", "failed_validation",
                                                         "too few rows")
        assert run.test_rows == 12 and run.ended_at is not None


def test_top_flagged_reads_the_view_highest_score_first(settings: Settings) -> None:
    engine = get_engine(settings.database_url)
    mapping = records_mapping()
    table = ensure_records_table(engine, mapping)
    frame = pd.DataFrame({"id": [1, 2, 3], "text": ["a", "b", "c"],
                          "label": pd.array([None, None, None], dtype="Int64")})
    with engine.begin() as conn:
        upsert_records(conn, table, mapping, frame)
    td.prepare_database.fn(settings)
    with engine.connect() as conn:  # the hash the database gives each text
        hashes = {i: conn.execute(sa.select(text_hash(sa.literal(t)))).scalar_one()
                  for i, t in ((1, "a"), (2, "b"), (3, "c"))}
    with session_scope(engine) as session:
        promote(
            session, expected_champion_id=None, model_name=settings.model_name,
            base_model="tiny-random", artifact_uri="/x", weights_sha256="0" * 64,
            data_fingerprint="f" * 64, hyperparameters={}, metrics={}, threshold=0.5,
            scores=[repo.ScoreRow(str(i), score, hashes[i])
                    for i, score in ((1, 0.7), (2, 0.2), (3, 0.9))])
    top = td.read_top_flagged.fn(settings.model_copy(update={"top_flagged": 1}))
    assert [(str(r["record_id"]), r["text"]) for r in top] == [("3", "c")]



@pytest.mark.parametrize("call", [
    "tasks.database:read_top_flagged", "tasks.database:extract_labelled",
    "tasks.check:gather_findings", "tasks.model:load_champion",
    "tasks.scoring:plan_scoring", "tasks.promotion:check_champion"])
def test_a_task_facing_a_silent_database_host_fails_within_the_connect_timeout(
        silent_server: int, call: str) -> None:
    import importlib
    import time

    from sqlalchemy.exc import OperationalError

    from db.engine import get_engine as engines

    module, name = call.split(":")
    task = getattr(importlib.import_module(module), name)
    settings = Settings(database_url=f"postgresql+psycopg://anomdet@127.0.0.1:{silent_server}/x",
                        connect_timeout=1)
    arguments = {"plan_scoring": (4,), "check_champion": (None,)}.get(name, ())
    started = time.monotonic()
    with pytest.raises(OperationalError, match="timeout"):
        task.fn(settings, *arguments)
    # libpq gives up after 1 s per address tried; without the setting it would wait 10.
    assert time.monotonic() - started < 8
    engines.cache_clear()
