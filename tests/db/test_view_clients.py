"""Every view anomdet creates reads from any SQL client, with nothing of anomdet loaded:
Python's sqlite3 module in a fresh interpreter, a plain SQLAlchemy engine, pandas and, on
PostgreSQL, psql. Built on SQLite and PostgreSQL, with integer and text ids."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest
import sqlalchemy as sa

from db.engine import get_engine, migrate
from db.feedback import QUALITY_VIEW, QUEUE_VIEW
from db.records import reflect_records_table
from db.repository import FLAGGED_VIEW, ensure_flagged_view
from tests.db.test_feedback import _label, _score, _views
from tests.db.test_scores import EVENTS, _events, _version

VIEWS = (FLAGGED_VIEW, QUEUE_VIEW, QUALITY_VIEW)
ID_TYPES = {"integer": (sa.BigInteger(), lambda n: n), "text": (sa.Text(), lambda n: f"r-{n}")}


def _filled(db_url: str, id_kind: str) -> dict[str, int]:
    """Records, a champion with flags and scores, reviewed flags and the three views;
    the number of rows each view should give."""
    engine = get_engine(db_url)
    migrate(engine)
    id_type, make = ID_TYPES[id_kind]
    _events(engine, id_type, [make(n) for n in range(1, 41)])
    version = _version(engine, 1, status="champion")
    _score(engine, version, lambda k: 0.9 if k.endswith(("1", "2", "3")) else 0.2)
    _label(engine, [make(1), make(2)], 1)  # two flags reviewed
    _views(engine)
    with engine.begin() as conn:
        ensure_flagged_view(conn, reflect_records_table(conn, EVENTS), EVENTS)
    engine.dispose()
    # Flags: ids ending in 1, 2 or 3 (1-3, 11-13, 21-23, 31-33), less the two labelled.
    return {FLAGGED_VIEW: 12 - 2, QUEUE_VIEW: 40 - 2, QUALITY_VIEW: 1}


_PLAIN_SQLITE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
for view in sys.argv[2:]:
    print(view, len(conn.execute(f"SELECT * FROM {view}").fetchall()))
assert not [m for m in sys.modules if m.split(".")[0] in ("anomdet", "db", "sqlalchemy")]
"""


@pytest.mark.parametrize("id_kind", sorted(ID_TYPES))
def test_every_view_reads_from_plain_clients(db_url: str, id_kind: str) -> None:
    expected = _filled(db_url, id_kind)
    plain = sa.create_engine(db_url)  # no anomdet hooks: no functions of anomdet's
    with plain.connect() as conn:
        counts = {view: len(conn.execute(sa.text(f"SELECT * FROM {view}")).all())
                  for view in VIEWS}
        frames = {view: pd.read_sql(sa.text(f"SELECT * FROM {view}"), conn) for view in VIEWS}
    plain.dispose()
    assert counts == expected
    assert {view: len(frame) for view, frame in frames.items()} == expected
    if plain.dialect.name == "sqlite":
        read = subprocess.run([sys.executable, "-c", _PLAIN_SQLITE, plain.url.database, *VIEWS],
                              capture_output=True, text=True, timeout=60)
    else:
        psql = shutil.which("psql")
        assert psql, "psql is needed to read the views as a PostgreSQL client would"
        url = plain.url.set(drivername="postgresql").render_as_string(hide_password=False)
        read = subprocess.run([psql, url, "-v", "ON_ERROR_STOP=1", "-At", "-c",
                               "; ".join(f"SELECT '{v}', count(*) FROM {v}" for v in VIEWS)],
                              capture_output=True, text=True, timeout=60)
    assert read.returncode == 0, read.stderr
    shown = dict(line.replace("|", " ").split() for line in read.stdout.split("\n") if line)
    assert {view: int(n) for view, n in shown.items()} == expected
