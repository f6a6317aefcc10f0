"""Engine setup and migrations."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.resources import files
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI hook
    cursor = dbapi_connection.cursor()
    # Foreign keys are off by default in SQLite; WAL lets readers work during a write,
    # and a busy timeout makes concurrent runs wait for the write lock instead of failing.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@cache
def get_engine(url: str) -> Engine:
    """One engine per database URL for the whole process."""
    engine = sa.create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any error."""
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session


def migrations_dir() -> Path:
    """The Alembic script directory shipped inside the `db` package."""
    return Path(str(files("db") / "migrations"))


def migrate(engine: Engine) -> None:
    """Bring the anomdet tables to the newest schema (idempotent; safe to run concurrently)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Two first runs at once would both try to create the tables: serialise them.
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(815202)"))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
