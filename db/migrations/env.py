"""Alembic environment: runs on the connection handed over by `db.engine.migrate`,
or on ANOMDET_DATABASE_URL when called from the `alembic` command line."""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = os.environ.get("ANOMDET_DATABASE_URL", "sqlite:///anomdet.db")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
