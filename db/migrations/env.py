"""Alembic environment for the anomdet tables.

`db.engine.migrate` hands over a connection and the migrations run inside its
transaction. From the command line, at the repository root (see alembic.ini):

    alembic upgrade head
    alembic revision --autogenerate --rev-id 0004 -m "what changes"

the database is the one every anomdet command uses: ANOMDET_DATABASE_URL, or the
settings' default.
"""

from __future__ import annotations

from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

from db.engine import MIGRATION_OPTIONS, lock_migrations
from db.models import Base

config = context.config


def _migrate(connection: sa.Connection) -> None:
    lock_migrations(connection)
    context.configure(connection=connection, target_metadata=Base.metadata,
                      **MIGRATION_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def _configured_engine() -> sa.Engine:
    # The command line reads the same settings as the anomdet commands (URL, default,
    # checks, connect timeout): one home for the URL, and no secret in alembic.ini.
    # Imported here only, so that migrating from code keeps `db` free of `anomdet`.
    from pydantic import ValidationError

    from anomdet.settings import Settings

    try:
        return Settings().engine()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: "
            f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise SystemExit(f"error: invalid configuration (ANOMDET_* environment variables): "
                         f"{problems}") from None


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
