"""The check flow's rule: when new labels, or drift, start a retrain."""

from __future__ import annotations

from anomdet.triggers import CheckFindings


def test_labels_start_a_retrain_once_enough_arrived_since_the_last_run() -> None:
    assert CheckFindings(99, 0, 0).reasons(100, on_drift=True) == []
    [reason] = CheckFindings(100, 0, 0).reasons(100, on_drift=True)
    assert reason.startswith("100 labels newer than the champion's training data")
    # A run under this champion saw 100 of 150 and was rejected: 50 more are not enough.
    assert CheckFindings(150, 100, 1).reasons(100, on_drift=True) == []
    [again] = CheckFindings(200, 100, 1).reasons(100, on_drift=True)
    assert again.startswith("100 labels newer than the last retraining run")


def test_drift_starts_one_retrain_per_champion_when_switched_on() -> None:
    breach = ("text length distribution: 0.9 exceeds the bound 0.25",)
    [reason] = CheckFindings(0, 0, 0, breach).reasons(100, on_drift=True)
    assert "drifted" in reason and breach[0] in reason
    assert CheckFindings(0, 0, 1, breach).reasons(100, on_drift=True) == []
    assert CheckFindings(0, 0, 0, breach).reasons(100, on_drift=False) == []
    assert "already retrained on" in CheckFindings(0, 0, 1, breach).summary(100)
