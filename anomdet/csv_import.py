"""Read a records CSV (id,text[,label]) and refuse it whole if any row is bad."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import pandas as pd

REQUIRED = ("id", "text")


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


def read_records_csv(path: Path) -> pd.DataFrame:
    """Parse and check a records CSV; returns standard columns id, text, label."""
    path = Path(path)
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
    problems = []
    ids = pd.to_numeric(frame["id"], errors="coerce")
    bad_id = ids.isna() | (ids != ids.round())
    if bad_id.any():
        problems.append(f"column id is not a whole number on line(s) {_rows(bad_id, frame)}")
    dup = frame["id"].duplicated(keep=False) & ~bad_id
    if dup.any():
        problems.append(f"column id repeats on line(s) {_rows(dup, frame)}")
    label = frame["label"] if "label" in frame.columns else pd.Series("", index=frame.index)
    bad_label = ~label.str.strip().isin(["", "0", "1"])
    if bad_label.any():
        problems.append(f"column label must be 0, 1 or empty; line(s) {_rows(bad_label, frame)}")
    if problems:
        raise ValueError(f"{path}: nothing imported; " + "; ".join(problems))
    labels = pd.to_numeric(label.str.strip().replace("", None), errors="coerce").astype("Int64")
    return pd.DataFrame({"id": ids.astype("int64"), "text": frame["text"], "label": labels})
