"""Engine setup and migrations."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from functools import cache
from importlib.resources import files
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI hook
    cursor = dbapi_connection.cursor()
    # Foreign keys are off by default in SQLite; WAL lets readers work during a write,
    # and a busy timeout makes concurrent runs wait for the write lock instead of failing.
    # The timeout comes first; switching a new database to WAL needs a lock too, which
    # the timeout does not always wait for (see _switch_to_wal).
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    _switch_to_wal(cursor)
    cursor.close()
    # The text hash of db.records.text_hash, for anomdet's own queries only: SQLite has
    # no hash function built in, so no view may call it (see db.records.text_unchanged).
    dbapi_connection.create_function("sha3", 1, _sha3, deterministic=True)
    # anomdet_version_quality takes a square root and anomdet_label_queue a logarithm:
    # SQLite has sqrt() and ln() only when built with its math functions, so a build
    # without them gets Python's.
    try:
        dbapi_connection.execute("SELECT sqrt(4.0), ln(2.0)")
    except sqlite3.OperationalError:
        dbapi_connection.create_function("sqrt", 1, _sqrt, deterministic=True)
        dbapi_connection.create_function("ln", 1, _ln, deterministic=True)


#: How long a SQLite connection waits for another's lock before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    """Put the database in WAL mode, waiting as the busy timeout would.

    Written by hand because SQLite does not call its busy handler here: while another
    connection holds a rollback-journal write lock (a first run creating its tables, or
    another application writing), the switch fails at once with "database is locked",
    whatever the timeout. The failed statement keeps no lock, so trying again is safe.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def _sqrt(value: object) -> float | None:
    return None if value is None or float(value) < 0 else math.sqrt(float(value))


def _ln(value: object) -> float | None:
    return None if value is None or float(value) <= 0 else math.log(float(value))


def _sha3(value: object) -> bytes | None:
    """SHA3-256 of a value as the sqlite3 shell's sha3() computes it (text as UTF-8)."""
    if value is None:
        return None
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return hashlib.sha3_256(data).digest()


#: Seconds to wait for a database server to accept a connection. A host that takes
#: the connection and never answers would otherwise hold a command for minutes.
DEFAULT_CONNECT_TIMEOUT = 10.0

#: The variable that names anomdet's database, and the database where it is unset.
DATABASE_URL_VARIABLE = "ANOMDET_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite:///anomdet.db"


def environment_database_url() -> str:
    """The database URL as the environment sets it: what the migrations fall back to
    when their caller names no database (anomdet's settings read the same variable)."""
    return os.environ.get(DATABASE_URL_VARIABLE, DEFAULT_DATABASE_URL)


def describe_database(url: str) -> str:
    """The database of `url` for people, without its password: "SQLite database PATH" or
    "PostgreSQL database 'NAME' on HOST:PORT"."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite database {parsed.database}"
    return (f"PostgreSQL database {parsed.database!r} on {parsed.host or 'localhost'}:"
            f"{parsed.port or 5432}")


def get_engine(url: str, connect_timeout: float | None = None) -> Engine:
    """One engine per database URL (and connect timeout) for the whole process."""
    return _engine(url, float(connect_timeout or DEFAULT_CONNECT_TIMEOUT))


@cache
def _engine(url: str, connect_timeout: float) -> Engine:
    connect_args: dict[str, object] = {}
    if sa.engine.make_url(url).get_backend_name() == "postgresql":
        # libpq counts whole seconds; at least 1, or 0 would mean "wait forever".
        connect_args["connect_timeout"] = max(1, round(connect_timeout))
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


get_engine.cache_clear = _engine.cache_clear  # type: ignore[attr-defined]


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any error."""
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session


def migrations_dir() -> Path:
    """The Alembic script directory shipped inside the `db` package."""
    return Path(str(files("db") / "migrations"))


def owned_by_anomdet(name: str | None, type_: str, _parent_names: object) -> bool:
    """Alembic's filter of reflected names: autogenerate compares only the tables anomdet
    owns (prefix `anomdet_`). The user's records table shares the database, and a
    revision must never propose to drop it."""
    return type_ != "table" or (name or "").startswith("anomdet_")


#: How Alembic runs anomdet's migrations, from code and from the command line alike.
#: Batch mode: SQLite changes a column only by copying its table.
MIGRATION_OPTIONS: dict[str, object] = {"render_as_batch": True,
                                        "include_name": owned_by_anomdet}


_MIGRATING = threading.Lock()


def lock_sqlite_writes(connection: Connection) -> None:
    """On SQLite, take the database's write lock now, until the transaction ends.

    Python's sqlite3 opens a transaction only before a data change, so a read followed
    by DDL (look for a table or view, then make it) would run unlocked, and two runs
    starting at once would both decide to create it. The busy timeout makes the second
    run wait for the lock, then read what the first one made. No-op on other databases.
    """
    if connection.dialect.name != "sqlite":
        return
    dbapi = connection.connection.dbapi_connection
    if dbapi is not None and not dbapi.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def lock_migrations(connection: Connection) -> None:
    """Serialise migrations of one database until the transaction ends: two first runs
    at once would both try to create the tables."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(815202)"))
    else:
        lock_sqlite_writes(connection)


def migrate(engine: Engine) -> None:
    """Bring the anomdet tables to the newest schema (idempotent; safe to run concurrently)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # Alembic keeps the running migration's context in a module global, so two threads
    # of one process (runs started together in it) must not migrate at once; across
    # processes the database lock of `lock_migrations` serialises them.
    with _MIGRATING, engine.begin() as connection:
        # db/migrations/env.py migrates on this connection, inside this transaction.
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def head_revision() -> str:
    """The newest Alembic revision of anomdet's tables, as this code ships it."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return str(ScriptDirectory.from_config(config).get_current_head())


class NoDatabaseFile(LookupError):
    """A SQLite URL names a file that does not exist (and reading must not create it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(str(path))


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision of anomdet's tables in the database; None when it holds none.

    Reads only. On SQLite the file is opened read-only by the driver itself, since the
    engine's own connections would create a missing file and switch a foreign one to WAL;
    a missing file raises `NoDatabaseFile`.
    """
    if engine.dialect.name == "sqlite":
        return _sqlite_revision(engine)
    with engine.connect() as conn:
        return _revision_of(conn)


def _revision_of(conn: Connection) -> str | None:
    inspector = sa.inspect(conn)
    # Another application may keep its own alembic_version: anomdet's runs table says
    # whether anomdet's tables are there at all.
    if not (inspector.has_table("anomdet_runs") and inspector.has_table("alembic_version")):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def _sqlite_revision(engine: Engine) -> str | None:
    name = engine.url.database or ""
    if name in ("", ":memory:") or name.startswith("file:"):
        # In memory, or a URI filename whose mode (ro, rwc) the URL itself chose.
        with engine.connect() as conn:
            return _revision_of(conn)
    path = Path(name)
    if not path.is_file():
        raise NoDatabaseFile(path.resolve())
    try:
        with closing(sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro",
                                     uri=True)) as raw:
            tables = {r[0] for r in raw.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"anomdet_runs", "alembic_version"} <= tables:
                return None
            row = raw.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error as exc:
        # Reported as the engine's own failures are (not a database, locked, ...).
        raise sa.exc.OperationalError("reading the schema revision", None, exc) from exc
    return row[0] if row else None
