"""Alembic environment for the anomdet tables.

`db.engine.migrate` hands over a connection and the migrations run inside its
transaction. From the command line, at the repository root (see alembic.ini):

    alembic upgrade head
    alembic revision --autogenerate --rev-id 0004 -m "what changes"

the database is the one every anomdet command uses: alembic.ini names the function
that opens it (`engine`, "module:function"), so that this environment reads no settings
and `db` imports nothing above it. A caller's `sqlalchemy.url` comes first; with neither,
the database is ANOMDET_DATABASE_URL, else the default SQLite file.
"""

from __future__ import annotations

import importlib
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

from db.engine import MIGRATION_OPTIONS, environment_database_url, get_engine, lock_migrations
from db.models import Base

config = context.config


def _migrate(connection: sa.Connection) -> None:
    lock_migrations(connection)
    context.configure(connection=connection, target_metadata=Base.metadata,
                      **MIGRATION_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def _configured_engine() -> sa.Engine:
    url = config.get_main_option("sqlalchemy.url")
    named = config.get_main_option("engine")
    if named and not url:
        module, _, function = named.partition(":")
        return getattr(importlib.import_module(module), function)()
    return get_engine(url or environment_database_url())


def run_migrations() -> None:
    if context.is_offline_mode():
        # 0003 reads the existing view (and its grants) to put it back as it was.
        raise SystemExit("error: anomdet's migrations need the live database; "
                         "run them without --sql")
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    with _configured_engine().begin() as connection:
        _migrate(connection)


run_migrations()
