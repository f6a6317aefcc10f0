"""CSV import refuses a bad file whole and says which lines and columns are wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomdet.csv_import import read_records_csv


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
