"""The database that the `alembic` command line migrates, at the repository root.

alembic.ini names `engine` for db/migrations/env.py, which reads no settings of its own:
so `alembic upgrade head` and `alembic check` reach the database every anomdet command
reaches (ANOMDET_DATABASE_URL or its default, the connect timeout, the same checks), and
alembic.ini holds no secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def engine() -> Engine:
    """The configured database's engine; a bad setting ends the command in one line."""
    from anomdet.settings import InvalidConfiguration, load_settings

    try:
        return load_settings().engine()
    except InvalidConfiguration as exc:
        raise SystemExit(f"error: {exc}") from None
