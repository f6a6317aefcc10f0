"""Checks that find the rows behind a read that failed, to name them to a person."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from db.records import RecordsMapping, reflect_records_table

# How many offending rows a message names.
EXAMPLES = 5


def unreadable_timestamps(conn: Connection, mapping: RecordsMapping) -> str | None:
    """A sentence naming the table, column and rows whose timestamps cannot be read,
    or None when every value reads.

    SQLite stores a DATETIME column's values as text, so it accepts any text there
    ('02/01/2026 3am'); SQLAlchemy reads them back as ISO 8601 only.
    """
    if not mapping.timestamp_column:
        return None
    table = reflect_records_table(conn, mapping)
    column = table.c[mapping.timestamp_column]
    parse = column.type.dialect_impl(conn.dialect).result_processor(conn.dialect, None)
    if parse is None:
        return None
    raw = sa.select(table.c[mapping.id_column], sa.type_coerce(column, sa.String)) \
        .where(column.is_not(None)).order_by(table.c[mapping.id_column])
    bad: list[tuple[Any, Any]] = []
    count = 0
    for record_id, value in conn.execute(raw):
        if not _reads(parse, value):
            count += 1
            if len(bad) < EXAMPLES:
                bad.append((record_id, value))
    if not bad:
        return None
    shown = ", ".join(f"id {rid}: {value!r}" for rid, value in bad)
    return (f"records table {mapping.table!r}, column {mapping.timestamp_column!r}: {count} "
            f"value(s) are not timestamps ({shown}); store them as ISO 8601 "
            "(e.g. 2026-02-01 03:00:00), or set ANOMDET_RECORDS__TIMESTAMP_COLUMN= to read "
            "no timestamp column")


def explain_unreadable_timestamps(exc: BaseException, engine: Engine,
                                  mapping: RecordsMapping) -> str | None:
    """For a read that failed with `exc`: the sentence of `unreadable_timestamps` when the
    driver could not parse a stored timestamp, or None for any other failure."""
    if not (isinstance(exc, ValueError) and "isoformat" in str(exc)):
        return None
    with engine.connect() as conn:
        return unreadable_timestamps(conn, mapping)


def _reads(parse: Any, value: Any) -> bool:
    try:
        parse(value)
    except (ValueError, TypeError):
        return False
    return True
