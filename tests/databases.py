"""Which database a test that takes `db_url` runs on.

Tests of database behaviour run on SQLite and on PostgreSQL (the `db_url` fixture). A flow
test whose subject does not depend on the database (a Prefect concurrency slot, a timeout,
a task runner) runs on one of them, chosen here, so the suite pays for it once.

Tests that start from a trained champion train it once per backend into a template
database and work on copies of it (`new_database`, `copy_database`, `copy_into`).
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from db.engine import get_engine

_PARAMS = {"sqlite": "sqlite",
           "postgresql": pytest.param("postgresql", marks=pytest.mark.postgres)}


def only_on(database: str) -> pytest.MarkDecorator:
    """Run the test on `database` ('sqlite' or 'postgresql') only."""
    return pytest.mark.parametrize("db_url", [_PARAMS[database]], indirect=True)


@dataclass(frozen=True)
class Database:
    """A test database: its backend, URL and, for SQLite, its file."""

    backend: str
    url: str
    path: Path | None = None


def new_database(backend: str, folder: Path, prefix: str = "anomdet_template") -> Database:
    """An empty database of `backend`: a file in `folder`, or a new PostgreSQL database."""
    if backend == "sqlite":
        path = folder / f"{prefix}.db"
        return Database("sqlite", f"sqlite:///{path}", path)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _admin_execute(f'CREATE DATABASE "{name}"')
    return Database("postgresql", _postgres_url(name))


def copy_database(template: Database, folder: Path) -> Database:
    """A private copy of `template`: a file in `folder`, or a new PostgreSQL database."""
    if template.backend == "sqlite":
        copy = new_database("sqlite", folder, prefix="anomdet_test")
        copy_into(template, copy.url)
        return copy
    name = f"anomdet_test_{uuid.uuid4().hex[:10]}"
    get_engine(template.url).dispose()  # PostgreSQL copies a template nobody is connected to
    _admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{_name(template.url)}"')
    return Database("postgresql", _postgres_url(name))


def copy_into(template: Database, url: str) -> None:
    """Make the (empty) database at `url` a copy of `template`, under the same URL."""
    # PostgreSQL copies a template only while nobody is connected to it.
    get_engine(template.url).dispose()
    get_engine(url).dispose()
    if template.backend == "sqlite":
        # The backup API copies a consistent state, write-ahead log included.
        with sqlite3.connect(template.path) as src, \
                sqlite3.connect(sa.engine.make_url(url).database) as dst:
            src.backup(dst)
        return
    _admin_execute(f'DROP DATABASE IF EXISTS "{_name(url)}" WITH (FORCE)',
                   f'CREATE DATABASE "{_name(url)}" TEMPLATE "{_name(template.url)}"')


def drop_database(database: Database) -> None:
    """Drop a PostgreSQL database (a SQLite file goes with its temporary folder)."""
    get_engine(database.url).dispose()
    if database.backend == "postgresql":
        _admin_execute(f'DROP DATABASE IF EXISTS "{_name(database.url)}" WITH (FORCE)')


def _name(url: str) -> str:
    return str(sa.engine.make_url(url).database)


def _postgres_url(name: str) -> str:
    from tests.conftest import POSTGRES_URL

    return sa.engine.make_url(POSTGRES_URL).set(database=name).render_as_string(
        hide_password=False)


def _admin_execute(*statements: str) -> None:
    from tests.conftest import _postgres_admin

    admin = _postgres_admin()
    try:
        with admin.connect() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        admin.dispose()
