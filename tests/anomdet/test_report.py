"""anomdet.report: metrics side by side and the decision as markdown that shows values
as they are."""

from __future__ import annotations

import math

from anomdet.promotion import Check, Decision
from anomdet.report import METRICS_SHOWN, decision_markdown, metrics_table

CHALLENGER = {"f1": 0.8, "precision": 0.75, "recall": 0.9, "pr_auc": 0.85, "roc_auc": 0.95,
              "accuracy": 0.97, "threshold": 0.4}
CHAMPION = {"f1": 0.7, "precision": 0.8, "recall": 0.6, "pr_auc": 0.8, "roc_auc": 0.9,
            "accuracy": 0.96}


def test_rows_give_both_models_and_their_differences() -> None:
    rows = metrics_table(CHALLENGER, CHAMPION, {"f1": 0.5})
    assert [r["metric"] for r in rows] == list(METRICS_SHOWN)
    f1 = rows[0]
    assert f1 == {"metric": "f1", "challenger": "0.8000", "champion": "0.7000",
                  "difference": "0.1000", "baseline": "0.5000", "vs_baseline": "0.3000"}
    precision = rows[1]
    assert precision["difference"] == "-0.0500" and precision["baseline"] == "-"


def test_a_first_run_has_dashes_where_there_is_no_champion() -> None:
    rows = metrics_table(CHALLENGER, None)
    assert all(r["champion"] == r["difference"] == r["baseline"] == "-" for r in rows)
    assert all(r["challenger"] != "-" for r in rows)


def test_missing_and_odd_values_are_shown_not_raised() -> None:
    [row] = [r for r in metrics_table({"f1": "n/a", "roc_auc": math.nan}, {"f1": None})
             if r["metric"] == "f1"]
    assert row["challenger"] == "n/a" and row["champion"] == "-"
    roc = next(r for r in metrics_table({"roc_auc": math.nan}, None) if r["metric"] == "roc_auc")
    assert roc["challenger"] == "nan"


def test_decision_markdown_lists_every_check_and_the_metrics() -> None:
    decision = Decision(promote=False, checks=(
        Check("f1 floor", True, "0.80 >= 0.50"),
        Check("bootstrap", False, "interval crosses 0"),
    ), reason="the gain may be noise")
    text = decision_markdown(decision, CHALLENGER, CHAMPION, {"f1": 0.5})
    lines = text.splitlines()
    assert lines[0] == "# Challenger NOT PROMOTED"
    assert "the gain may be noise" in lines
    assert "| f1 floor | pass | 0.80 &gt;= 0.50 |" in lines
    assert "| bootstrap | FAIL | interval crosses 0 |" in lines
    assert "| f1 | 0.8000 | 0.7000 | 0.1000 | 0.5000 | 0.3000 |" in lines


def test_markdown_keeps_reasons_as_text() -> None:
    """A reason holding pipes, newlines or HTML cannot break the table or inject markup."""
    decision = Decision(promote=True, checks=(Check("a|b", True, "<b>x</b>\ny"),),
                        reason="<script>alert(1)</script>")
    text = decision_markdown(decision, CHALLENGER, None)
    assert text.startswith("# Challenger PROMOTED")
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "| a\\|b | pass | &lt;b&gt;x&lt;/b&gt; y |" in text.splitlines()
