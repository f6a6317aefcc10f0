"""Read a records CSV (id,text[,label]) and refuse it whole if any row is bad."""

from __future__ import annotations

import csv
import io
import re
import uuid
import warnings
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from db.records import IdColumn

REQUIRED = ("id", "text")
#: The default records table's key (see db.records.records_table_definition).
BIGINT_ID = IdColumn("records.id", "BIGINT", "integer", -(2 ** 63), 2 ** 63 - 1)
# Digits only: 2.0 and 1e3 are refused rather than read through a float, which would
# turn 9007199254740993 into ...992, another record's id.
_WHOLE_NUMBER = re.compile(r"^\s*[+-]?[0-9]+\s*$")


def _rows(mask: pd.Series, frame: pd.DataFrame, limit: int = 10) -> str:
    # CSV line numbers: the header is line 1, so data row i is line i + 2.
    lines = (frame.index[mask] + 2).tolist()
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return ", ".join(str(n) for n in lines[:limit]) + more


def _malformed_line(path: Path) -> str | None:
    """Where a file stops being UTF-8 or CSV, by line, or None if the csv module finds nothing.

    pandas reports byte offsets within its read buffer and record numbers; people count
    lines, so the file is walked again, line by line and then with the csv module.
    """
    raw = path.read_bytes()
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return (f"line {number} is not UTF-8 (byte {line[exc.start]:#04x} at byte "
                    f"{exc.start + 1} of the line); save the file as UTF-8")
    reader = csv.reader(io.StringIO(raw.decode("utf-8"), newline=""), strict=True)
    start, width = 1, None
    try:
        for fields in reader:
            width = len(fields) if width is None else width
            if len(fields) > width:
                return (f"line {start} has {len(fields)} fields but the header has {width}; "
                        "put texts that contain commas in double quotes")
            start = reader.line_num + 1
    except csv.Error as exc:
        return f"the record starting on line {start} is malformed ({exc}); check its quotes"
    return None


def read_records_csv(path: Path, id_column: IdColumn = BIGINT_ID) -> pd.DataFrame:
    """Parse and check a records CSV; returns standard columns id, text, label.

    Ids are read as the strings they are and converted to what `id_column` holds
    exactly (integers within its range, UUIDs, texts as they are), never through a float.
    """
    frame = _read_frame(Path(path))
    ids, problems = parse_ids(frame["id"], id_column, frame)
    label = frame["label"] if "label" in frame.columns else pd.Series("", index=frame.index)
    bad_label = ~label.str.strip().isin(["", "0", "1"])
    if bad_label.any():
        problems.append(f"column label must be 0, 1 or empty; line(s) {_rows(bad_label, frame)}")
    if problems:
        raise ValueError(f"{path}: nothing imported; " + "; ".join(problems))
    labels = pd.to_numeric(label.str.strip().replace("", None), errors="coerce").astype("Int64")
    return pd.DataFrame({"id": ids, "text": frame["text"], "label": labels})


def _read_frame(path: Path) -> pd.DataFrame:
    """The CSV as strings, with its required columns, or a ValueError saying where it breaks."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        # Without index_col=False, rows longer than the header silently turn their first
        # fields into an index; the warning pandas gives then is raised as an error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8",
                                index_col=False)
    except (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError,
            csv.Error) as exc:
        where = _malformed_line(path)
        raise ValueError(f"{path}: not a well-formed UTF-8 CSV: {where or exc}; nothing "
                         "imported") from exc
    except pd.errors.EmptyDataError as exc:
        raise ValueError(f"{path}: the file is empty; expected a header id,text[,label]") from exc
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; the header has "
                         f"{', '.join(frame.columns)} (expected id,text and optional label)")
    return frame


def parse_ids(raw: pd.Series, column: IdColumn,
              frame: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """The ids as the values `column` holds (Python ints, UUIDs or strings), and what is
    wrong with them, by CSV line."""
    parse = {"integer": _integer_id, "uuid": _uuid_id, "text": _text_id}[column.kind]
    parsed = [parse(value, column) for value in raw.tolist()]
    problems = []
    for reason in dict.fromkeys(p for p in parsed if isinstance(p, _Bad)):
        bad = pd.Series([p == reason for p in parsed], index=raw.index)
        examples = ", ".join(_shown(v) for v in raw[bad].head(3))
        problems.append(f"column id {reason.why} on line(s) {_rows(bad, frame)} "
                        f"(e.g. {examples}); {reason.fix}")
    good = pd.Series([not isinstance(p, _Bad) for p in parsed], index=raw.index)
    values = pd.Series(parsed, index=raw.index, dtype=object)
    dup = values.where(good).duplicated(keep=False) & good
    if dup.any():
        problems.append(f"column id repeats on line(s) {_rows(dup, frame)}")
    return values, problems


def _shown(value: str, limit: int = 40) -> str:
    # An example id, not a wall of text: a long one is cut, and says so.
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} chars)"


class _Bad(NamedTuple):
    """Why an id was refused, and what to do about it."""

    why: str
    fix: str


def _integer_id(value: str, column: IdColumn) -> int | _Bad:
    if not _WHOLE_NUMBER.match(value):
        return _Bad("is not a whole number",
                    f"{column.where} is {column.type_name}: write ids as digits only, "
                    "like 2 (not 2.0 or 1e3)")
    number = int(value)
    if not column.low <= number <= column.high:
        return _Bad(f"is outside the range of {column.where}",
                    f"{column.type_name} holds {column.low} to {column.high}")
    return number


def _uuid_id(value: str, column: IdColumn) -> uuid.UUID | _Bad:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        return _Bad("is not a UUID", f"{column.where} is {column.type_name}: write ids "
                                    "like 123e4567-e89b-12d3-a456-426614174000")


def _text_id(value: str, column: IdColumn) -> str | _Bad:
    if value == "":
        return _Bad("is empty", "give every record an id")
    if column.max_length is not None and len(value) > column.max_length:
        return _Bad(f"is longer than the {column.max_length} characters {column.where} "
                    "holds", "shorten those ids or widen the column")
    return value
