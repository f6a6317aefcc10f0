"""Access to the user's records table through a checked column mapping.

The records table belongs to the user. anomdet only ever reaches it through a
`RecordsMapping` whose names are checked twice: against a strict identifier
pattern, then against the schema reflected from the database. Queries are built
from the reflected `Table`, so SQLAlchemy quotes every name; no configured name
is ever pasted into SQL text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

logger = logging.getLogger(__name__)

# Plain SQL identifiers only: a name that needs quoting to be valid is refused,
# which keeps injected SQL (`records; DROP TABLE x`) out before any query exists.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

#: Standard column names of the frames anomdet works on, whatever the user's names.
STANDARD_COLUMNS = ("id", "text", "label", "created_at")


def check_identifier(name: str, what: str) -> str:
    """Return `name` if it is a plain SQL identifier, else raise a ValueError naming `what`."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(
            f"{what} {name!r} is not a plain SQL identifier: use letters, digits and "
            "underscores, starting with a letter or underscore (at most 63 characters)"
        )
    return name


@dataclass(frozen=True)
class RecordsMapping:
    """Where the records live: a table and the columns holding id, text, label and time."""

    table: str = "records"
    id_column: str = "id"
    text_column: str = "text"
    label_column: str = "label"
    timestamp_column: str | None = "created_at"
    schema: str | None = None

    def __post_init__(self) -> None:
        check_identifier(self.table, "records table")
        if self.schema is not None:
            check_identifier(self.schema, "records schema")
        for what, name in self.columns().items():
            check_identifier(name, f"{what} column")
        names = list(self.columns().values())
        if len(set(names)) != len(names):
            raise ValueError(f"the mapped columns must be distinct, got {names}")

    def columns(self) -> dict[str, str]:
        """Standard name -> the user's column name, for the columns that are mapped."""
        cols = {"id": self.id_column, "text": self.text_column, "label": self.label_column}
        if self.timestamp_column:
            cols["created_at"] = self.timestamp_column
        return cols


def reflect_records_table(engine: Engine | Connection, mapping: RecordsMapping) -> sa.Table:
    """Reflect the records table and check that every mapped column exists."""
    inspector = sa.inspect(engine)
    tables = inspector.get_table_names(schema=mapping.schema)
    if mapping.table not in tables:
        # anomdet's own tables (and Alembic's) are never the records: leave them out.
        shown = ", ".join(sorted(t for t in tables if not t.startswith("anomdet_")
                                 and t != "alembic_version")) or "none"
        raise ValueError(
            f"records table {mapping.table!r} does not exist in the database "
            f"(tables there: {shown}); create it, import a CSV with `anomdet import-csv`, "
            "or set ANOMDET_RECORDS__TABLE"
        )
    table = sa.Table(mapping.table, sa.MetaData(), schema=mapping.schema, autoload_with=engine)
    missing = [
        f"{what} column {name!r}"
        for what, name in mapping.columns().items()
        if name not in table.c
    ]
    if missing:
        raise ValueError(
            f"records table {mapping.table!r} lacks the mapped {', '.join(missing)}; "
            f"its columns are {', '.join(table.c.keys())}"
        )
    return table


def records_table_definition(mapping: RecordsMapping, metadata: sa.MetaData) -> sa.Table:
    """The default records table shape, used when anomdet creates the table itself."""
    columns = [
        sa.Column(mapping.id_column, sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column(mapping.text_column, sa.Text, nullable=True),
        sa.Column(mapping.label_column, sa.SmallInteger, nullable=True),
    ]
    if mapping.timestamp_column:
        columns.append(sa.Column(mapping.timestamp_column, sa.DateTime(timezone=True)))
    return sa.Table(mapping.table, metadata, *columns, schema=mapping.schema)


def ensure_records_table(engine: Engine, mapping: RecordsMapping) -> sa.Table:
    """Create the records table in the default shape if it does not exist; return it reflected."""
    metadata = sa.MetaData()
    records_table_definition(mapping, metadata).create(engine, checkfirst=True)
    return reflect_records_table(engine, mapping)


def _standard_select(table: sa.Table, mapping: RecordsMapping) -> sa.Select:
    cols = [table.c[name].label(std) for std, name in mapping.columns().items()]
    return sa.select(*cols)


def _standardise(frame: pd.DataFrame) -> pd.DataFrame:
    if "created_at" not in frame.columns:
        frame["created_at"] = pd.NaT
    return frame[list(STANDARD_COLUMNS)]


def read_labelled(
    conn: Connection, table: sa.Table, mapping: RecordsMapping, *, chunk_size: int = 10_000
) -> pd.DataFrame:
    """All labelled records as a frame with the standard columns, read in chunks.

    Labels are returned as stored, so validation can report bad values; only the texts
    '0' and '1' of a text-typed label column are read as the classes they name.
    """
    label = table.c[mapping.label_column]
    query = _standard_select(table, mapping).where(label.is_not(None))
    query = query.order_by(table.c[mapping.id_column])
    chunks = list(pd.read_sql(query, conn, chunksize=chunk_size))
    if not chunks:
        return _standardise(pd.DataFrame(columns=list(mapping.columns())))
    frame = pd.concat(chunks, ignore_index=True)
    if not pd.api.types.is_numeric_dtype(frame["label"]):  # text, or mixed as in SQLite
        frame["label"] = frame["label"].map(_class_from_text)
    return _standardise(frame)


def _class_from_text(value: object) -> object:
    # Without this, every label of a TEXT column would fail validation as "'1' not in
    # [0, 1]", hiding the few that are really wrong; import-csv reads '0'/'1' the same way.
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return value


def iter_unlabelled(
    conn: Connection,
    table: sa.Table,
    mapping: RecordsMapping,
    *,
    chunk_size: int = 5_000,
    id_range: tuple[object, object] | None = None,
    after: object | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream unlabelled records in id order, `chunk_size` rows at a time.

    Keyset pagination (id > last id) keeps each query cheap and the memory use
    independent of the table size. `id_range` limits ids to [low, high];
    `after` starts past an id already processed.
    """
    id_col = table.c[mapping.id_column]
    base = _standard_select(table, mapping).where(table.c[mapping.label_column].is_(None))
    if id_range is not None:
        base = base.where(id_col >= id_range[0], id_col <= id_range[1])
    last = after
    while True:
        query = base if last is None else base.where(id_col > last)
        rows = conn.execute(query.order_by(id_col).limit(chunk_size)).all()
        if not rows:
            return
        frame = pd.DataFrame(rows, columns=list(mapping.columns()))
        last = rows[-1][0]
        yield _standardise(frame)


def id_ranges(
    conn: Connection, table: sa.Table, mapping: RecordsMapping, *, parts: int,
    after: object | None = None,
) -> tuple[list[tuple[object, object]], int]:
    """Cut the unlabelled ids past `after` into about `parts` ranges of equal row counts.

    Returns the inclusive (low, high) ranges and the number of records they hold.
    Boundaries come from OFFSET look-ups on the id index, so no id list is loaded.
    """
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    id_col = table.c[mapping.id_column]
    base = sa.select(id_col).where(table.c[mapping.label_column].is_(None))
    if after is not None:
        base = base.where(id_col > after)
    count = int(conn.execute(sa.select(sa.func.count()).select_from(base.subquery())).scalar())
    if count == 0:
        return [], 0
    size = -(-count // parts)
    ranges = []
    for start in range(0, count, size):
        stop = min(start + size, count) - 1
        low = conn.execute(base.order_by(id_col).offset(start).limit(1)).scalar()
        high = conn.execute(base.order_by(id_col).offset(stop).limit(1)).scalar()
        ranges.append((_plain(low), _plain(high)))
    return ranges, count


def unlabelled_id_bounds(
    conn: Connection, table: sa.Table, mapping: RecordsMapping
) -> tuple[object, object, int]:
    """(min id, max id, count) of the unlabelled records."""
    id_col = table.c[mapping.id_column]
    query = sa.select(sa.func.min(id_col), sa.func.max(id_col), sa.func.count()).where(
        table.c[mapping.label_column].is_(None)
    )
    low, high, count = conn.execute(query).one()
    return low, high, int(count)


def count_rows(conn: Connection, table: sa.Table) -> int:
    """Number of rows in `table`."""
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def upsert_records(
    conn: Connection, table: sa.Table, mapping: RecordsMapping, frame: pd.DataFrame
) -> int:
    """Insert or update records (standard columns in `frame`) by id; returns rows written."""
    if frame.empty:
        return 0
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ValueError(f"upsert is supported on SQLite and PostgreSQL, not {dialect}")
    names = {std: col for std, col in mapping.columns().items() if std in frame.columns}
    rows = [
        {names[std]: _plain(value) for std, value in row.items() if std in names}
        for row in frame.to_dict(orient="records")
    ]
    stmt = insert(table)
    updates = {col: stmt.excluded[col] for std, col in names.items() if std != "id"}
    stmt = stmt.on_conflict_do_update(index_elements=[table.c[mapping.id_column]], set_=updates)
    for start in range(0, len(rows), 5_000):
        conn.execute(stmt, rows[start : start + 5_000])
    return len(rows)


def _plain(value: object) -> object:
    """pandas missing values and numpy scalars as plain Python values for the driver."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value
