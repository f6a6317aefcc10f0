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
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

if TYPE_CHECKING:
    import pandas as pd

# pandas is imported by the functions that make frames: `status`, `flagged`, `models` and
# `rollback` reach this module through the repository and make none, and would otherwise
# pay half a second for it.

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
    """Where the records live: a table and the columns holding id, text, label and time.

    Built by `anomdet.settings.RecordsSettings.mapping`, which holds the defaults.
    """

    table: str
    id_column: str
    text_column: str
    label_column: str
    timestamp_column: str | None
    schema: str | None

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
    """Reflect the records table (or view: anomdet only reads records) and check that
    every mapped column exists, and that the label column holds the classes as numbers."""
    inspector = sa.inspect(engine)
    tables = inspector.get_table_names(schema=mapping.schema)
    if mapping.table not in tables and mapping.table not in inspector.get_view_names(
            schema=mapping.schema):
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
    _check_label_type(table, mapping, inspector.dialect)
    return table


def _check_label_type(table: sa.Table, mapping: RecordsMapping, dialect: sa.Dialect) -> None:
    # PostgreSQL compares a BOOLEAN with 0 and 1 nowhere (boolean = integer), and every
    # query and view of anomdet counts labels as 0 and 1. SQLite keeps a BOOLEAN as 0
    # and 1, which compare as numbers.
    label = table.c[mapping.label_column]
    if dialect.name == "postgresql" and isinstance(label.type, sa.Boolean):
        where = f"{mapping.table}.{mapping.label_column}"
        raise ValueError(
            f"label column {where} is BOOLEAN: anomdet reads labels as 0 (normal) and 1 "
            "(anomalous) in an integer column; add one (ALTER TABLE "
            f"{mapping.table} ADD COLUMN {mapping.label_column}_int smallint; UPDATE "
            f"{mapping.table} SET {mapping.label_column}_int = {mapping.label_column}::int) "
            f"and set ANOMDET_RECORDS__LABEL_COLUMN={mapping.label_column}_int")


def is_view(engine: Engine | Connection, mapping: RecordsMapping) -> bool:
    """Whether the mapped records are a view (which anomdet reads but never writes)."""
    return mapping.table in sa.inspect(engine).get_view_names(schema=mapping.schema)


def _view_refused(mapping: RecordsMapping) -> ValueError:
    return ValueError(
        f"records {mapping.table!r} is a view: anomdet reads records from a view (retrain, "
        "score, flagged work on it) but writes records only into a table; import into the "
        "table behind the view, or set ANOMDET_RECORDS__TABLE to a table")


def check_writable_ids(table: sa.Table, mapping: RecordsMapping) -> None:
    """Refuse a records table whose ids an import cannot insert or update by: writes go
    by id (INSERT ... ON CONFLICT (id)), which needs a unique constraint on the id alone."""
    if _unique_by_schema(table, mapping):
        return
    where = f"{mapping.table}.{mapping.id_column}"
    key = list(table.primary_key.columns)
    has = (f"the primary key is ({', '.join(c.name for c in key)})" if key
           else "the table has no primary key")
    raise ValueError(
        f"{where} is not unique on its own ({has}): an import inserts or updates records "
        f"by {mapping.id_column}, which needs a unique constraint on {mapping.id_column} "
        f"alone; add one (CREATE UNIQUE INDEX {mapping.table}_{mapping.id_column}_key ON "
        f"{mapping.table} ({mapping.id_column})) or load these rows with your own tools")


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
    """Create the records table in the default shape if it does not exist; return it
    reflected. A view of that name is refused: records are written into tables only."""
    if is_view(engine, mapping):
        raise _view_refused(mapping)
    metadata = sa.MetaData()
    records_table_definition(mapping, metadata).create(engine, checkfirst=True)
    return reflect_records_table(engine, mapping)


@dataclass(frozen=True)
class IdColumn:
    """What the records' id column can hold exactly, for checking ids before a write."""

    where: str  # "records.id", for messages
    type_name: str  # as the database names it, e.g. BIGINT
    kind: str  # "integer", "text" or "uuid"
    low: int | None = None  # integer bounds
    high: int | None = None
    max_length: int | None = None  # text


# Bits of each integer type on PostgreSQL; SQLite stores every integer in 64 bits.
_INTEGER_BITS = ((sa.BigInteger, 64), (sa.SmallInteger, 16), (sa.Integer, 32))


def id_column_kind(column: sa.Column, dialect: sa.Dialect, where: str) -> IdColumn:
    """Describe an id column: integers with their bounds, UUIDs, or texts with their length."""
    kind, name = column.type, _type_name(column, dialect)
    if isinstance(kind, sa.Integer):
        bits = 64 if dialect.name == "sqlite" else next(b for t, b in _INTEGER_BITS
                                                        if isinstance(kind, t))
        return IdColumn(where, name, "integer", -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if isinstance(kind, sa.Uuid):
        return IdColumn(where, name, "uuid")
    if isinstance(kind, sa.String | sa.types.NullType):
        return IdColumn(where, name, "text", max_length=getattr(kind, "length", None))
    raise ValueError(f"{where} is {name}: anomdet imports ids into integer, text or UUID "
                     "columns only; map ANOMDET_RECORDS__ID_COLUMN to such a column")


def _type_name(column: sa.Column, dialect: sa.Dialect) -> str:
    try:
        return column.type.compile(dialect=dialect)
    except sa.exc.CompileError:  # a type the dialect cannot spell (NullType)
        return "untyped"


def target_id_column(engine: Engine, mapping: RecordsMapping) -> IdColumn:
    """The id column an import writes into: the table's own, or the default shape's when
    the table does not exist yet (nothing is created here). A view, or a table whose ids
    are not unique on their own, is refused."""
    if is_view(engine, mapping):
        raise _view_refused(mapping)
    if mapping.table in sa.inspect(engine).get_table_names(schema=mapping.schema):
        table = reflect_records_table(engine, mapping)
        check_writable_ids(table, mapping)
    else:
        table = records_table_definition(mapping, sa.MetaData())
    return id_column_kind(table.c[mapping.id_column], engine.dialect,
                          f"{mapping.table}.{mapping.id_column}")


def _standard_select(table: sa.Table, mapping: RecordsMapping) -> sa.Select:
    cols = [table.c[name].label(std) for std, name in mapping.columns().items()]
    return sa.select(*cols)


def _standardise(frame: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    if "created_at" not in frame.columns:
        frame["created_at"] = pd.NaT
    return frame[list(STANDARD_COLUMNS)]


def read_labelled(
    conn: Connection, table: sa.Table, mapping: RecordsMapping, *, chunk_size: int = 10_000,
    sample: int | None = None, seed: int = 0,
) -> pd.DataFrame:
    """All labelled records as a frame with the standard columns, read in chunks.

    Labels are returned as stored, so validation can report bad values; only the texts
    '0' and '1' of a text-typed label column are read as the classes they name.

    With `sample`, a table holding more labelled records than that gives a stratified
    sample drawn by the database: each class keeps its share of `sample` rows, chosen
    by a seeded hash of the id (the same rows again while the table is the same), so
    the whole table never lands in memory. Records whose label is neither class are all
    kept, for validation to report.
    """
    import pandas as pd

    label = table.c[mapping.label_column]
    query = _standard_select(table, mapping).where(label.is_not(None))
    if sample is not None:
        query = _stratified(conn, table, mapping, query, sample, seed)
    query = query.order_by(table.c[mapping.id_column])
    chunks = list(pd.read_sql(query, conn, chunksize=chunk_size))
    if not chunks:
        return _standardise(pd.DataFrame(columns=list(mapping.columns())))
    frame = pd.concat(chunks, ignore_index=True)
    if not pd.api.types.is_numeric_dtype(frame["label"]):  # text, or mixed as in SQLite
        frame["label"] = frame["label"].map(_class_from_text)
    return _standardise(frame)


def label_classes(label: sa.Column) -> tuple[object, object]:
    """The values of the label column that mean 0 and 1: a text-typed label column holds
    them as the texts '0' and '1'."""
    return ("0", "1") if isinstance(label.type, sa.String) else (0, 1)


def _stratified(conn: Connection, table: sa.Table, mapping: RecordsMapping,
                query: sa.Select, sample: int, seed: int) -> sa.Select:
    """`query` narrowed to a stratified sample of `sample` labelled records, or unchanged
    when the table holds no more than that."""
    label = table.c[mapping.label_column]
    classes = label_classes(label)
    counts = dict(conn.execute(sa.select(label, sa.func.count()).where(label.in_(classes))
                               .group_by(label)).all())
    total = sum(counts.values())
    if total <= sample:
        return query
    order = text_hash(sa.cast(table.c[mapping.id_column], sa.Text) + f":{int(seed)}")
    kept = []
    for value, count in counts.items():
        take = max(1, round(sample * count / total))
        first = (sa.select(table.c[mapping.id_column].label("id")).where(label == value)
                 .order_by(order, table.c[mapping.id_column]).limit(take).subquery())
        kept.append(sa.select(first.c.id))  # SQLite orders and limits a subquery only
    chosen = sa.union_all(*kept).subquery()
    return query.where(sa.or_(label.not_in(classes),
                              table.c[mapping.id_column].in_(sa.select(chosen.c[0]))))


def _class_from_text(value: object) -> object:
    # Without this, every label of a TEXT column would fail validation as "'1' not in
    # [0, 1]", hiding the few that are really wrong; import-csv reads '0'/'1' the same way.
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return value


class _TextHash(FunctionElement):
    """text_hash(text): see `text_hash`; rendered for each database by the rules below."""

    type = sa.String(64)
    name = "text_hash"
    inherit_cache = True


@compiles(_TextHash, "postgresql")
def _text_hash_postgresql(element: _TextHash, compiler: SQLCompiler, **kw: object) -> str:
    return f"md5(CAST({compiler.process(element.clauses, **kw)} AS TEXT))"


@compiles(_TextHash)
def _text_hash_sqlite(element: _TextHash, compiler: SQLCompiler, **kw: object) -> str:
    # hex(NULL) is '' in SQLite: nullif keeps a missing text's hash NULL, as md5 does.
    return f"nullif(lower(hex(sha3({compiler.process(element.clauses, **kw)}))), '')"


def text_hash(text: sa.ColumnElement[object]) -> sa.ColumnElement[str]:
    """The hash of a record's text that scores and flags keep, computed by the database.

    PostgreSQL: md5 of the text. SQLite: SHA3-256 in hex through sha3(), which `db.engine`
    registers on anomdet's connections (no view uses it: see `text_unchanged`). Either
    way the value is only ever compared with another value computed the same way on the
    same database.
    """
    return _TextHash(text)


def text_unchanged(stored_hash: sa.ColumnElement[object], text: sa.ColumnElement[object],
                   dialect: sa.Dialect) -> sa.ColumnElement[bool]:
    """For a view: the record's text still hashes to `stored_hash`, where the database
    has a hash function built in (PostgreSQL's md5); elsewhere always true.

    A view must read from any client, and SQLite has no hash function of its own (the
    sqlite3 shell's sha3() is the shell's, not the library's), so there a view relies on
    the mark that scoring runs set on flags of changed texts instead
    (`db.repository.retire_changed_flags`). Written as a CASE on purpose: as a plain
    equality PostgreSQL's planner counts it as a second join key (see
    db.repository.flagged_view_select).
    """
    if dialect.name != "postgresql":
        return sa.true()
    return sa.case((stored_hash == text_hash(text), sa.true()), else_=sa.false())


def record_key(table: sa.Table, mapping: RecordsMapping) -> sa.ColumnElement[str]:
    """A record's id as text, as the database writes it: the key of scores and flags.

    The database casts, not Python, so an id reads the same in every query and view
    (no '6.0' for an integer that pandas held as a float, no other UUID spelling).
    """
    return sa.cast(table.c[mapping.id_column], sa.Text)


_BIGINT_MAX, _BIGINT_MIN = str(2**63 - 1), str(-(2**63))
_UUID_TEXT = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def key_matches(table: sa.Table, mapping: RecordsMapping, key: sa.ColumnElement[str],
                dialect: sa.Dialect) -> sa.ColumnElement[bool]:
    """`record_key(table) == key`, written so that an index on the records' id serves it.

    The plain comparison casts each record's id to text, which no index on the user's
    table serves: a join or a lookup by key reads the whole table. Here the key is cast
    to the id's own type instead, so the database looks the record up by its id.

    Keys are ids as the database writes them as text, so the cast is exact on its
    canonical spellings (no leading zeros, lower-case UUIDs), and only those reach it:
    any other key matches nothing, as before, and never fails the query. On PostgreSQL
    the condition is the cast alone, so that the planner sees one id lookup per key;
    SQLite's CAST never fails and reads '7x' as 7, so the text comparison stays beside it.
    """
    exact = record_key(table, mapping) == key
    column = table.c[mapping.id_column]
    try:
        kind = id_column_kind(column, dialect, f"{mapping.table}.{mapping.id_column}").kind
    except ValueError:
        return exact
    if dialect.name == "postgresql":
        if kind == "integer":
            c_key = sa.collate(key, "C")  # digit strings of one length sort as numbers
            fits = sa.or_(key.regexp_match("^(0|-?[1-9][0-9]{0,17})$"),
                          sa.and_(key.regexp_match("^[1-9][0-9]{18}$"), c_key <= _BIGINT_MAX),
                          sa.and_(key.regexp_match("^-[1-9][0-9]{18}$"), c_key <= _BIGINT_MIN))
            return column == sa.case((fits, sa.cast(key, sa.BigInteger)))
        if kind == "uuid":
            return column == sa.case((key.regexp_match(_UUID_TEXT), sa.cast(key, sa.Uuid)))
        return column == key if isinstance(column.type, sa.String) else exact
    if kind == "integer":
        return sa.and_(column == sa.cast(key, sa.Integer), exact)
    if kind == "text" and not isinstance(column.type, sa.types.NullType):
        return sa.and_(column == key, exact)
    return exact  # a column without a type compares integers and texts as unequal


def _raw_id(table: sa.Table, mapping: RecordsMapping) -> sa.ColumnElement[object]:
    # Ids travel from the driver and back to it unchanged: SQLAlchemy's own UUID type
    # on SQLite would bind a UUID as 32 hex digits where the table may hold 36.
    return sa.type_coerce(table.c[mapping.id_column], sa.types.NullType())


def ids_are_unique(table: sa.Table, mapping: RecordsMapping) -> bool:
    """Whether the schema keeps ids unique: a primary key or unique constraint on the id alone.

    Not on SQLite when the column declares no type: it keeps 5000 and '5000' apart, and
    both are the record key '5000'."""
    if isinstance(table.c[mapping.id_column].type, sa.types.NullType):
        return False
    return _unique_by_schema(table, mapping)


def _unique_by_schema(table: sa.Table, mapping: RecordsMapping) -> bool:
    """Whether a primary key, unique constraint or unique index holds the id alone."""
    id_col = table.c[mapping.id_column]
    if list(table.primary_key.columns) == [id_col]:
        return True
    keys = [c for c in table.constraints if isinstance(c, sa.UniqueConstraint)]
    keys += [ix for ix in table.indexes if ix.unique]
    return any(list(key.columns) == [id_col] for key in keys)


def _shared_keys(table: sa.Table, mapping: RecordsMapping) -> sa.Select | None:
    """Record keys held by more than one record, or None when the schema rules them out.

    Keys, not raw ids: two ids that the database keeps apart may write as one key
    (5000 and '5000' in a SQLite column without a type), and scores and flags are kept
    by key."""
    if ids_are_unique(table, mapping):
        return None
    other = table.alias("shared_ids")
    other_key = record_key(other, mapping)
    return (sa.select(other_key).where(other.c[mapping.id_column].is_not(None))
            .group_by(other_key).having(sa.func.count() > 1))


def _unlabelled(table: sa.Table, mapping: RecordsMapping) -> sa.ColumnElement[bool]:
    return table.c[mapping.label_column].is_(None)


def _keyed(table: sa.Table, mapping: RecordsMapping) -> sa.ColumnElement[bool]:
    """Records whose id identifies them: not NULL, and whose key no other record shares.

    Scores, flags and the view are keyed by id as text; a record without one, or sharing
    its key, could be given another record's flag, so it is counted and left unscored.
    """
    id_col = table.c[mapping.id_column]
    shared = _shared_keys(table, mapping)
    if shared is None:
        return id_col.is_not(None)
    return sa.and_(id_col.is_not(None), record_key(table, mapping).not_in(shared))


def _work(table: sa.Table, mapping: RecordsMapping, version_id: int | None) -> sa.Select:
    """Unlabelled, keyed records that `version_id` has not scored for their current text."""
    key, digest = record_key(table, mapping), text_hash(table.c[mapping.text_column])
    query = sa.select(_raw_id(table, mapping).label("id"), key.label("key"),
                      table.c[mapping.text_column].label("text"), digest.label("text_hash"))
    query = query.where(_unlabelled(table, mapping), _keyed(table, mapping))
    if version_id is not None:
        from db.models import Score  # db.models does not import this module: no cycle

        scores = Score.__table__
        done = sa.exists().where(scores.c.model_version_id == version_id,
                                 scores.c.record_id == key,
                                 scores.c.text_hash.is_not_distinct_from(digest))
        query = query.where(~done)
    return query


IdRange = tuple[object | None, object | None]


def _in_range(query: sa.Select, raw_id: sa.ColumnElement[object],
              id_range: IdRange | None) -> sa.Select:
    if id_range is None:
        return query
    low, high = id_range
    if low is not None:
        query = query.where(raw_id >= low)
    if high is not None:
        query = query.where(raw_id < high)
    return query


def iter_unlabelled(
    conn: Connection,
    table: sa.Table,
    mapping: RecordsMapping,
    *,
    chunk_size: int = 5_000,
    id_range: IdRange | None = None,
    version_id: int | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream the unlabelled records to score, in id order, `chunk_size` rows at a time.

    With `version_id`, only those that version has not scored for their current text.
    Frames hold `id` (as the driver gives it), `key` (the id as text), `text` and
    `text_hash`. `id_range` is half-open, [low, high), either end None for open.
    Keyset pagination (id > last id) keeps each query cheap; ids are unique among the
    records it yields (see `_keyed`), so no record at a chunk's edge is skipped.
    """
    import pandas as pd

    raw_id = _raw_id(table, mapping)
    base = _in_range(_work(table, mapping, version_id), raw_id, id_range)
    last: object | None = None
    while True:
        query = base if last is None else base.where(raw_id > last)
        rows = conn.execute(query.order_by(raw_id).limit(chunk_size)).all()
        if not rows:
            return
        last = rows[-1][0]
        # Object columns: an integer id stays the integer it is, never a float, and a
        # missing text or hash stays None, never NaN.
        yield pd.DataFrame({name: pd.Series([r[i] for r in rows], dtype=object)
                            for i, name in enumerate(("id", "key", "text", "text_hash"))})


@contextmanager
def unscored_chunks(
    engine: Engine, mapping: RecordsMapping, *, version_id: int, id_range: IdRange | None,
    chunk_size: int,
) -> Iterator[Iterator[pd.DataFrame]]:
    """The unlabelled records of one id range that `version_id` has not scored for their
    current text, as `iter_unlabelled` streams them in chunks of `chunk_size`.

    A context manager, so that the connection the chunks are read on is given back as
    soon as the caller is done with them, or fails part-way, not when the stream
    happens to be collected. The chunks' scores are kept on other connections meanwhile
    (see `db.repository.keep_scores`).
    """
    with engine.connect() as conn:
        table = reflect_records_table(conn, mapping)
        yield iter_unlabelled(conn, table, mapping, chunk_size=chunk_size, id_range=id_range,
                              version_id=version_id)


def id_ranges(
    conn: Connection, table: sa.Table, mapping: RecordsMapping, *, parts: int,
    version_id: int | None = None,
) -> tuple[list[IdRange], int]:
    """Cut the records to score into about `parts` half-open id ranges of equal counts.

    Returns the ranges and the number of records they hold. Together the ranges cover
    every id (the first is open below, the last above), so a record added while they
    are scored is not lost between two. The boundaries are ids of the records, found by
    numbering them in id order: no min() or max(), which PostgreSQL lacks for UUIDs.
    """
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    work = _work(table, mapping, version_id).subquery()
    count = int(conn.execute(sa.select(sa.func.count()).select_from(work)).scalar_one())
    if count == 0:
        return [], 0
    size = -(-count // parts)
    number = sa.func.row_number().over(order_by=work.c.id)
    numbered = sa.select(work.c.id, number.label("n")).subquery()
    starts = conn.execute(sa.select(numbered.c.id).where(numbered.c.n % size == 1 % size)
                          .order_by(numbered.c.n)).scalars().all()
    bounds: list[object | None] = [None, *[plain(b) for b in starts[1:]], None]
    return list(zip(bounds[:-1], bounds[1:], strict=True)), count


def unkeyed_unlabelled(
    conn: Connection, table: sa.Table, mapping: RecordsMapping, *, examples: int = 20
) -> tuple[int, list[str]]:
    """How many unlabelled records cannot be scored for want of an id of their own,
    with some of their ids ('NULL' for a missing one)."""
    keyless = sa.and_(_unlabelled(table, mapping), sa.not_(_keyed(table, mapping)))
    count = int(conn.execute(sa.select(sa.func.count()).select_from(table).where(keyless))
                .scalar_one())
    if count == 0:
        return 0, []
    shown = conn.execute(sa.select(record_key(table, mapping)).where(keyless)
                         .limit(examples)).scalars().all()
    return count, ["NULL" if k is None else k for k in shown]


def sample_unlabelled(conn: Connection, table: sa.Table, mapping: RecordsMapping,
                      limit: int) -> list[str]:
    """Texts of at most `limit` unlabelled records, the newest first: by the mapped
    timestamp column when there is one, else by id (descending, through its index)."""
    order = [table.c[mapping.id_column].desc()]
    if mapping.timestamp_column:
        order.insert(0, table.c[mapping.timestamp_column].desc().nulls_last())
    text = table.c[mapping.text_column]
    query = (sa.select(text).where(_unlabelled(table, mapping), text.is_not(None))
             .order_by(*order).limit(limit))
    return [str(t) for t in conn.execute(query).scalars()]


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
        {names[std]: plain(value) for std, value in row.items() if std in names}
        for row in frame.to_dict(orient="records")
    ]
    stmt = insert(table)
    updates = {col: stmt.excluded[col] for std, col in names.items() if std != "id"}
    stmt = stmt.on_conflict_do_update(index_elements=[table.c[mapping.id_column]], set_=updates)
    for start in range(0, len(rows), 5_000):
        conn.execute(stmt, rows[start : start + 5_000])
    return len(rows)


def plain(value: object) -> object:
    """`value` as the plain Python value that database drivers and JSON take: a numpy
    scalar as the number (or string, bool) it holds, NaN and pandas' missing values as
    None, a pandas timestamp as a datetime; anything else unchanged."""
    # A numpy or pandas value exists only once its library is loaded, so the library is
    # looked up rather than imported: callers that never hold one do not load it.
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and value != value):
        return None
    pandas = sys.modules.get("pandas")
    if pandas is not None:
        if value is pandas.NA or value is pandas.NaT:
            return None
        if isinstance(value, pandas.Timestamp):
            return value.to_pydatetime()
    return value


