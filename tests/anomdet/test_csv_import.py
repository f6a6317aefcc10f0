"""CSV import refuses a bad file whole and says which lines and columns are wrong."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from anomdet.csv_import import read_records_csv
from db.records import IdColumn


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "records.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_good_file_is_read_with_optional_labels(tmp_path: Path) -> None:
    frame = read_records_csv(_write(tmp_path, 'id,text,label\n1,"a, quoted",1\n2,b,\n3,c,0\n'))
    assert frame["id"].tolist() == [1, 2, 3]
    assert frame["text"].tolist() == ["a, quoted", "b", "c"]
    assert frame["label"].tolist()[0] == 1 and frame["label"].isna().tolist() == [False, True,
                                                                                   False]
    no_label = read_records_csv(_write(tmp_path, "id,text\n1,a\n"))
    assert no_label["label"].isna().all()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,body\n1,a\n", "missing column\\(s\\) text"),
        ("id,text,label\n1,a,yes\n2,b,2\n3,c,-1\n",
         "label must be 0, 1 or empty; line\\(s\\) 2, 3, 4"),
        ("id,text\n1,a\n1,b\n", "id repeats on line\\(s\\) 2, 3"),
        ("id,text\nx,a\n", "id is not a whole number on line\\(s\\) 2"),
        ('id,text\n1,"unclosed\n2,b\n', "not a well-formed"),
        ("", "empty"),
    ],
)
def test_bad_files_are_refused_with_where(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_records_csv(_write(tmp_path, content))


def test_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "records.csv"
    path.write_bytes(b"id,text\n1,\xff\xfe\x00bad\n")
    with pytest.raises(ValueError, match="not a well-formed UTF-8 CSV"):
        read_records_csv(path)


def test_integer_ids_are_read_exactly_never_through_a_float(tmp_path: Path) -> None:
    frame = read_records_csv(_write(tmp_path, "id,text\n9007199254740993,a\n-9223372036854775808,"
                                              "b\n9223372036854775807,c\n0,d\n"))
    assert frame["id"].tolist() == [9007199254740993, -(2**63), 2**63 - 1, 0]
    assert all(type(i) is int for i in frame["id"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,text\n18446744073709551615,a\n", "outside the range of records.id on line\\(s\\) 2"),
        ("id,text\n9223372036854775808,a\n", "outside the range of records.id on line\\(s\\) 2"),
        ("id,text\n9007199254740993,a\n2.0,b\n", "not a whole number on line\\(s\\) 3 "
                                                 "\\(e.g. '2.0'\\)"),
        ("id,text\n1e3,a\n", "not a whole number on line\\(s\\) 2 \\(e.g. '1e3'\\)"),
        ("id,text\n01,a\n1,b\n", "id repeats on line\\(s\\) 2, 3"),
    ],
)
def test_integer_ids_the_key_cannot_hold_are_refused(tmp_path: Path, content: str,
                                                     message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_records_csv(_write(tmp_path, content))


def test_ids_follow_the_type_of_the_key_column(tmp_path: Path) -> None:
    text = IdColumn("events.id", "TEXT", "text")
    path = _write(tmp_path, f"id,text\naaa-new,a\n007,b\n7,c\n{'x' * 300},d\n")
    assert read_records_csv(path, text)["id"].tolist() == ["aaa-new", "007", "7", "x" * 300]
    short = IdColumn("events.id", "VARCHAR(5)", "text", max_length=5)
    with pytest.raises(ValueError, match="longer than the 5 characters events.id holds on "
                                         "line\\(s\\) 2, 5 \\(e.g. 'aaa-new', 'xxxxx"):
        read_records_csv(path, short)
    small = IdColumn("events.id", "SMALLINT", "integer", -(2**15), 2**15 - 1)
    with pytest.raises(ValueError, match="outside the range of events.id on line\\(s\\) 3"):
        read_records_csv(_write(tmp_path, "id,text\n32767,a\n32768,b\n"), small)
    uuids = IdColumn("events.id", "UUID", "uuid")
    key = uuid.uuid4()
    assert read_records_csv(_write(tmp_path, f"id,text\n{key},a\n"), uuids)["id"].tolist() == [key]
    with pytest.raises(ValueError, match="column id is not a UUID on line\\(s\\) 2"):
        read_records_csv(_write(tmp_path, "id,text\n12,a\n"), uuids)
