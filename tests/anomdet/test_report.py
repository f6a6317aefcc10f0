"""anomdet.report: metrics side by side and the decision as markdown that shows values
as they are."""

from __future__ import annotations

import math

from anomdet.promotion import Check, Decision
from anomdet.report import METRICS_SHOWN, RunSummary, decision_markdown, metrics_table

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


def test_state_messages_say_what_happened() -> None:
    from anomdet.report import promoted_message, rejected_message

    assert promoted_message(4, "f1", {"f1": 0.981}, {"f1": 0.969}, 3, 312) == (
        "promoted v4: f1 0.981 (+0.012 over v3), 312 records flagged")
    assert promoted_message(1, "f1", {"f1": 0.5}, None, None, 7) == (
        "promoted v1: f1 0.500 (first champion), 7 records flagged")
    noise = Decision(promote=False, checks=(
        Check("min_absolute_improvement", True, "+0.004 >= 0"),
        Check("bootstrap:f1", False, "interval crosses 0")), reason="may be noise",
        bootstrap={"confidence": 0.95, "ci_low": -0.0101, "ci_high": 0.0203})
    assert rejected_message(noise, "f1", {"f1": 0.804}, {"f1": 0.8}) == (
        "rejected: f1 gain +0.004 may be noise (95% interval [-0.010, +0.020])")
    guard = Decision(promote=False, checks=(Check("guard:recall", False, "fell by 0.2\nfar"),),
                     reason="recall fell")
    assert rejected_message(guard, "f1", CHALLENGER, CHAMPION) == (
        "rejected: fell by 0.2 far")


def _summary(**changes: object) -> RunSummary:

    fields = dict(
        model_name="spam", run_id=7,
        settings={"base model": "bundled", "epochs": 3, "learning rate": 3e-05, "seed": 42,
                  "max length": 128, "precision": "int8", "threshold": 0.6123},
        splits={"train": (700, 70), "validation": (150, 15), "test": (150, 14)},
        training_seconds=125.4,
        history=[{"epoch": 1, "step": 40, "epochs_seen": 0.91, "train_loss": 0.41234,
                  "val_loss": 0.3, "val_pr_auc": 0.8, "samples_per_s": 48.123}],
        challenger=CHALLENGER, champion=CHAMPION, baseline={"f1": 0.5}, champion_version=3,
        decision=Decision(promote=True, checks=(), reason="better <b>by far</b>"),
        message="promoted v4: f1 0.800 (+0.100 over v3), 12 records flagged",
        promoted_version=4, flags_written=12, threshold=0.6123, artifact_uri="/srv/a|b")
    fields.update(changes)
    return RunSummary(**fields)


def test_the_summary_says_what_was_trained_on_what_and_what_changed() -> None:
    from anomdet.report import summary_markdown

    lines = summary_markdown(_summary()).splitlines()
    assert lines[0] == ("# Run 7 of spam: promoted v4: f1 0.800 (+0.100 over v3), "
                        "12 records flagged")
    for row in ("| base model | bundled |", "| learning rate | 3e-05 |", "| epochs | 3 |",
                "| seed | 42 |", "| max length | 128 |", "| precision | int8 |",
                "| threshold | 0.6123 |", "| train | 700 | 70 |", "| validation | 150 | 15 |",
                "| test | 150 | 14 |", "| 1 | 40 | 0.91 | 0.4123 | 0.3000 | 0.8000 | 48.1 |",
                "| f1 | 0.8000 | 0.7000 | 0.1000 | 0.5000 | 0.3000 |"):
        assert row in lines, row
    assert "Fine-tuning took 2 min 5 s." in lines
    assert "## Challenger against champion v3 and the TF-IDF baseline" in lines
    assert "better &lt;b&gt;by far&lt;/b&gt;" in lines
    assert ("Version 4 is champion now, at threshold 0.6123; 12 records flagged.") in lines
    assert "Model files: `/srv/a\\|b`" in lines
    assert ("Flagged records: `SELECT * FROM anomdet_flagged WHERE model_name = 'spam' "
            "ORDER BY score DESC;`") in lines


def test_a_rejected_summary_keeps_the_champion_and_shows_no_new_version() -> None:
    from anomdet.report import summary_markdown

    text = summary_markdown(_summary(promoted_version=None, artifact_uri=None,
                                     decision=Decision(False, (), "no gain"),
                                     message="rejected: no gain"))
    assert "Champion v3 stays; its flags are unchanged." in text.splitlines()
    assert "Model files" not in text and "is champion now" not in text
    first = summary_markdown(_summary(promoted_version=None, champion=None,
                                      champion_version=None, history=[]))
    assert "## Challenger against no champion yet and the TF-IDF baseline" in first
    assert "No validation check ran." in first and "There is still no champion." in first


def test_drift_and_scoring_reports() -> None:
    from anomdet.report import drift_markdown, scoring_markdown

    calm = drift_markdown("spam", {"rows": 900, "label_rate": 0.1, "oov_rate": 0.0123456,
                                   "reference": None, "breaches": [], "on_breach": "warn"})
    assert calm.splitlines()[0] == "# Drift of spam's records: within bounds"
    assert "| oov_rate | 0.01235 | - |" in calm.splitlines()
    assert "No champion yet: nothing to compare against." in calm
    drifted = drift_markdown("spam", {
        "rows": 900, "label_rate": 0.4, "oov_rate": 0.2, "on_breach": "fail",
        "reference": {"rows": 800, "label_rate": 0.1, "oov_rate": 0.01},
        "breaches": ["label_rate: 0.3000 exceeds the bound 0.1000 <now>"]})
    assert drifted.splitlines()[0] == "# Drift of spam's records: 1 bound(s) exceeded"
    assert "| label_rate | 0.4 | 0.1 |" in drifted.splitlines()
    assert "- label_rate: 0.3000 exceeds the bound 0.1000 &lt;now&gt;" in drifted.splitlines()
    scored = scoring_markdown("spam", 4, 0.61234, {"scored": 20, "flagged": 3, "skipped": 1,
                                                   "unkeyed": 2})
    assert "Threshold 0.6123: 20 records scored, 3 flagged, 1 skipped (no text)." in scored
    assert "2 records were not scored" in scored
    assert "WHERE model_name = 'spam'" in scored


def test_the_flags_query_quotes_the_model_name() -> None:
    from anomdet.report import flagged_sql

    assert flagged_sql("o'brien") == ("SELECT * FROM anomdet_flagged WHERE model_name = "
                                      "'o''brien' ORDER BY score DESC;")
