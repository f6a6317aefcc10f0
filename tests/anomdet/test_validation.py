"""The data gate: Great Expectations over labelled records.

Each GE run creates a context (about a second), so record-level problems share one
frame and one run; batch-level problems need a frame each.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from anomdet.errors import DataValidationError
from anomdet.validation import (
    ExpectationOutcome,
    ValidationReport,
    build_suite,
    validate_labelled,
)
from tests.configs import validation_config

NOT_NULL = "expect_column_values_to_not_be_null"
IN_SET = "expect_column_values_to_be_in_set"
BETWEEN = "expect_column_values_to_be_between"
MEAN = "expect_column_mean_to_be_between"
SUM = "expect_column_sum_to_be_between"
UNIQUE_SHARE = "expect_column_proportion_of_unique_values_to_be_between"


def records(n: int = 120, anomalies: int = 12) -> pd.DataFrame:
    """Distinct texts, ids 1..n, the first `anomalies` records labelled 1."""
    return pd.DataFrame({
        "id": range(1, n + 1),
        "text": [f"record {i} says something plain" for i in range(1, n + 1)],
        "label": [1 if i < anomalies else 0 for i in range(n)],
    })


def outcome(report: ValidationReport, expectation: str, column: str | None) -> ExpectationOutcome:
    [found] = [o for o in report.outcomes if (o.expectation, o.column) == (expectation, column)]
    return found


def failed(report: ValidationReport) -> set[tuple[str, str | None]]:
    return {(o.expectation, o.column) for o in report.failures()}


def test_clean_records_pass_and_docs_are_built(tmp_path: Path) -> None:
    frame = records().assign(created_at=pd.Timestamp("2026-01-01"))
    report = validate_labelled(frame, validation_config(), data_docs_dir=tmp_path / "docs")

    assert report.success and report.failures() == () and report.rows == 120
    checked = {(o.expectation, o.column) for o in report.outcomes}
    assert {("expect_column_to_exist", c) for c in ("id", "text", "label")} <= checked
    assert {(NOT_NULL, "id"), ("expect_column_values_to_be_unique", "id"), (NOT_NULL, "text"),
            ("expect_column_values_to_be_of_type", "text"), (IN_SET, "label"),
            ("expect_table_row_count_to_be_between", None), (MEAN, "label_value"),
            (SUM, "label_value"), (UNIQUE_SHARE, "text_key"),
            (BETWEEN, "text_stripped_length"), (BETWEEN, "labels_per_text")} <= checked
    assert "12 anomalous and 108 normal" in outcome(report, SUM, "label_value").observed
    summary = json.loads(json.dumps(report.summary()))
    assert summary["success"] is True and summary["failed"] == 0
    assert summary["evaluated"] == len(report.outcomes)
    assert report.to_markdown().startswith("## Data validation PASSED")
    assert "passed" in report.describe_failures()

    index = Path(report.data_docs_index or "")
    assert index == (tmp_path / "docs" / "index.html").resolve() and index.is_file()
    assert list((tmp_path / "docs" / "validations").rglob("*.html")), "no validation page"


def test_record_level_problems_fail_naming_their_ids() -> None:
    frame = records(130, anomalies=30).astype({"text": object, "label": object})
    frame.loc[frame["id"] == 1, "text"] = None
    frame.loc[frame["id"] == 2, "text"] = "   \t "
    frame.loc[frame["id"] == 3, "text"] = "x" * 1_000_000
    frame.loc[frame["id"] == 4, "text"] = 12345
    frame.loc[frame["id"] == 5, "label"] = 2
    frame.loc[frame["id"] == 6, "label"] = -1
    frame.loc[frame["id"] == 7, "label"] = "yes"
    frame.loc[frame["id"] == 8, "label"] = "a|b"
    frame.loc[frame["id"] == 9, "label"] = None
    frame.loc[frame["id"] == 11, "id"] = 10  # id 10 now appears twice
    # The same text (up to case and spacing) once anomalous and once normal.
    frame.loc[frame["id"] == 12, ["text", "label"]] = ["Card  declined twice", 1]
    frame.loc[frame["id"] == 20, ["text", "label"]] = ["card declined TWICE", 0]
    report = validate_labelled(frame, validation_config(text_max_length=1000))

    assert not report.success and report.data_docs_index is None
    assert failed(report) == {
        (NOT_NULL, "text"), ("expect_column_values_to_be_of_type", "text"),
        (BETWEEN, "text_stripped_length"), (IN_SET, "label"), (NOT_NULL, "label"),
        ("expect_column_values_to_be_unique", "id"), (BETWEEN, "labels_per_text"),
    }
    expected_ids = {
        (NOT_NULL, "text"): (1,),
        ("expect_column_values_to_be_of_type", "text"): (4,),
        (BETWEEN, "text_stripped_length"): (2, 3),
        (IN_SET, "label"): (5, 6, 7, 8),
        (NOT_NULL, "label"): (9,),
        ("expect_column_values_to_be_unique", "id"): (10,),
        (BETWEEN, "labels_per_text"): (12, 20),
    }
    for key, ids in expected_ids.items():
        found = outcome(report, *key)
        assert found.example_ids == ids, key
        assert found.unexpected_count == (2 if key[1] == "id" else len(ids)), key
    assert "'yes'" in outcome(report, IN_SET, "label").observed

    markdown = report.to_markdown()
    assert markdown.startswith("## Data validation FAILED")
    assert "]: 5, 6, 7, 8\n" in markdown and "]: 12, 20\n" in markdown
    assert len(markdown) < 20_000, "an offending text must not be copied whole"
    for row in [line for line in markdown.splitlines() if line.startswith("| ")]:
        assert len(re.findall(r"(?<!\\)\|", row)) == 6, row  # 'a|b' must not split a cell

    message = str(DataValidationError(report))
    assert "labels_per_text" in message and "ids: 12, 20" in message
    assert "text_max_length" in message  # says how to fix the length failure
    summary = json.loads(json.dumps(report.summary()))
    assert summary["failed"] == 7 and len(summary["failures"]) == 7


def test_outcomes_are_sorted_failed_first_then_by_name_and_column() -> None:
    frame = records()
    frame.loc[0, "text"] = " "
    report = validate_labelled(frame, validation_config())

    keys = [(o.success, o.expectation, o.column or "") for o in report.outcomes]
    assert keys == sorted(keys)
    assert not report.outcomes[0].success and all(o.success for o in report.outcomes[1:])
    assert report.failures() == report.outcomes[:1]


def _one_class() -> pd.DataFrame:
    return records().assign(label=0)


def _too_few_rows() -> pd.DataFrame:
    return records(60, anomalies=15)


def _rate_too_high() -> pd.DataFrame:
    return records(120, anomalies=72)


def _duplicates() -> pd.DataFrame:
    frame = records(120, anomalies=12)
    frame["text"] = [f"message {i % 40}" for i in range(120)]  # each text three times
    frame["label"] = [1 if i % 40 < 4 else 0 for i in range(120)]  # consistent per text
    return frame


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_one_class, {(MEAN, "label_value"), (SUM, "label_value")}),
        (_too_few_rows, {("expect_table_row_count_to_be_between", None)}),
        (_rate_too_high, {(MEAN, "label_value")}),
        (_duplicates, {(UNIQUE_SHARE, "text_key")}),
    ],
    ids=["one-class", "too-few-rows", "anomaly-rate", "duplicate-share"],
)
def test_batch_level_problems_fail_the_right_expectation(
    make: Callable[[], pd.DataFrame], expected: set[tuple[str, str | None]]
) -> None:
    report = validate_labelled(make(), validation_config())

    assert not report.success
    assert failed(report) == expected
    assert all(o.example_ids == () for o in report.failures())


def test_one_class_is_described_by_class_counts() -> None:
    report = validate_labelled(records(120, anomalies=3), validation_config(anomaly_rate_min=0))

    assert failed(report) == {(SUM, "label_value")}
    observed = outcome(report, SUM, "label_value").observed
    assert "3 anomalous and 117 normal" in observed and "at least 10 of each" in observed


def test_missing_columns_and_garbage_are_reported_not_raised() -> None:
    frame = pd.DataFrame({
        "id": [1, 2, 3, 4],
        "text": [["a", "list"], {"a": "dict"}, float("nan"), "fine"],
    })
    report = validate_labelled(frame, validation_config())

    assert not report.success
    assert outcome(report, "expect_column_to_exist", "label").observed == "missing"
    assert outcome(report, "expect_column_to_exist", "text").success
    label_null = outcome(report, NOT_NULL, "label")
    assert not label_null.success and "'label' is missing" in label_null.observed
    assert outcome(report, "expect_column_values_to_be_of_type", "text").example_ids == (1, 2)
    assert outcome(report, NOT_NULL, "text").example_ids == (3,)


def test_build_suite_derives_the_per_class_bound_from_rows() -> None:
    suite = build_suite(validation_config(min_rows_per_class=10), rows=50)

    [per_class] = [e for e in suite.expectations
                   if e.expectation_type == SUM and e.column == "label_value"]
    assert (per_class.min_value, per_class.max_value) == (10, 40)
    assert len(suite.expectations) == 15


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text_min_length": 10, "text_max_length": 5}, "text_min_length"),
        ({"anomaly_rate_min": 0.6, "anomaly_rate_max": 0.5}, "anomaly_rate_min"),
        ({"anomaly_rate_max": 1.5}, "anomaly_rate_max"),
        ({"max_duplicate_text_ratio": -0.1}, "max_duplicate_text_ratio"),
        ({"min_rows": -1}, "min_rows"),
        ({"min_rows_per_class": 2.5}, "min_rows_per_class"),
    ],
)
def test_config_rejects_impossible_bounds(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validation_config(**kwargs)
