"""Read a records CSV (id,text[,label]) and refuse it whole if any row is bad."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

REQUIRED = ("id", "text")


def _rows(mask: pd.Series, frame: pd.DataFrame, limit: int = 10) -> str:
    # CSV line numbers: the header is line 1, so data row i is line i + 2.
    lines = (frame.index[mask] + 2).tolist()
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return ", ".join(str(n) for n in lines[:limit]) + more


def read_records_csv(path: Path) -> pd.DataFrame:
    """Parse and check a records CSV; returns standard columns id, text, label."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a well-formed UTF-8 CSV: {exc}") from exc
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
