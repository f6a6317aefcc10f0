"""Shared fixtures: an isolated Prefect, databases (SQLite and PostgreSQL), records."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# Before anything imports prefect: a private Prefect home, no telemetry, and time for
# the temporary local API to start on a small machine.
_PREFECT_HOME = tempfile.mkdtemp(prefix="anomdet-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
for name in list(os.environ):
    if name.startswith("ANOMDET_") and name != "ANOMDET_TEST_POSTGRES_URL":
        del os.environ[name]
# pytest-xdist's workers inherit COLUMNS=80 and LINES=24; rich would fix the command
# line's width at 80 when `cli` is imported, before CliRunner sets its own.
for name in ("COLUMNS", "LINES"):
    os.environ.pop(name, None)
# Each xdist worker takes its share of the cores for torch (anomdet.device.configure_threads
# honours OMP_NUM_THREADS), rather than every worker using them all.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _CORES = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _CORES // _WORKERS)))

import sqlalchemy as sa  # noqa: E402

if TYPE_CHECKING:
    from tests.databases import Database

POSTGRES_URL = os.environ.get(
    "ANOMDET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `long` first, the Prefect server's ones before them. pytest-xdist hands
    tests out in this order, and a long test started last would keep one worker busy after
    the others have finished."""
    items.sort(key=lambda item: (item.get_closest_marker("long") is None,
                                 item.get_closest_marker("server") is None))


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for the whole test session, without flow heartbeats.

    A flow run's heartbeat thread sleeps in whole seconds and is joined when the run
    ends, so each flow run (and subflow) waits up to a second for it: a quarter of a
    tiny retraining run. Heartbeats feed a server's detection of crashed runs, which
    the harness's server does not run and no test relies on.
    """
    from prefect import flow_engine
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flow_engine.BaseFlowRunEngine, "heartbeat_seconds",
                      property(lambda _engine: None))
        with prefect_test_harness(server_startup_timeout=120):
            yield


def _postgres_admin() -> sa.Engine:
    engine = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable under CI: {exc}")
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}")
    return engine


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    from db.engine import get_engine
    from tests.databases import drop_database, new_database

    database = new_database("postgresql", tmp_path, prefix="anomdet_test")
    yield database.url
    drop_database(database)
    get_engine.cache_clear()


@pytest.fixture(scope="session",
                params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def champion_template(request: pytest.FixtureRequest, prefect_harness: None,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A database of toy records whose champion one `anomdet retrain` trained, once per
    backend in a session: the bad-input tests work on copies (tests/test_bad_input.py)."""
    from tests.databases import drop_database
    from tests.test_bad_input import train_champion_template

    template = train_champion_template(request.param, tmp_path_factory.mktemp("champion"))
    yield template
    drop_database(template)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file database."""
    return f"sqlite:///{tmp_path / 'anomdet.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'anomdet.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def anomdet_env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point anomdet's settings at a fresh database and artifacts folder, tiny model."""
    monkeypatch.setenv("ANOMDET_DATABASE_URL", db_url)
    monkeypatch.setenv("ANOMDET_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setenv("ANOMDET_TRAINING__BASE_MODEL", "tiny-random")
    monkeypatch.setenv("ANOMDET_TRAINING__EPOCHS", "2")
    monkeypatch.setenv("ANOMDET_TRAINING__MAX_LENGTH", "48")
    monkeypatch.setenv("ANOMDET_TRAINING__LEARNING_RATE", "0.001")
    monkeypatch.setenv("ANOMDET_TRAINING__MIN_STEPS", "40")
    monkeypatch.setenv("ANOMDET_PROMOTION__BOOTSTRAP_RESAMPLES", "200")
    # Data Docs are HTML for people, built by GE in half a second a run; the tests that
    # read them turn them on.
    monkeypatch.setenv("ANOMDET_VALIDATION__DATA_DOCS", "false")
    # One id range per backfill: a mapped task and a model load each, a tenth of a tiny
    # run. A backfill of 4 ranges, stopped and resumed, is tested on both databases
    # (tests/flows/test_promotion_faults.py); scoring runs map several (tests/flows).
    monkeypatch.setenv("ANOMDET_SCORING__BACKFILL_CHUNKS", "1")
    # A tiny random BERT rarely reaches the TF-IDF baseline; tests that need a champion
    # get one whatever it scores, and the baseline rule has tests of its own.
    monkeypatch.setenv("ANOMDET_PROMOTION__FIRST_RUN", "always")
    # Flow tests make a deliberately weak champion by training it at a tiny learning rate,
    # so that a normal challenger beats it. A probed head would be strong before any step;
    # the probe has tests of its own (tests/anomdet/test_model.py).
    monkeypatch.setenv("ANOMDET_TRAINING__PROBE_HEAD", "false")
    return db_url


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()
