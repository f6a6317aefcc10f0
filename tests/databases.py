"""Which database a test that takes `db_url` runs on.

Tests of database behaviour run on SQLite and on PostgreSQL (the `db_url` fixture). A flow
test whose subject does not depend on the database (a Prefect concurrency slot, a timeout,
a task runner) runs on one of them, chosen here, so the suite pays for it once.
"""

from __future__ import annotations

import pytest

_PARAMS = {"sqlite": "sqlite",
           "postgresql": pytest.param("postgresql", marks=pytest.mark.postgres)}


def only_on(database: str) -> pytest.MarkDecorator:
    """Run the test on `database` ('sqlite' or 'postgresql') only."""
    return pytest.mark.parametrize("db_url", [_PARAMS[database]], indirect=True)
