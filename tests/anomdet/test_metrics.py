"""Threshold choice and quality figures, checked against hand-worked examples and scikit-learn."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from anomdet import metrics
from anomdet.metrics import (
    QUALITY_METRICS,
    best_f1,
    choose_threshold,
    classification_metrics,
    resampled_metric,
)

# Worked by hand: at 0.4 three anomalies and one normal are flagged (P 3/4, R 1, F1 6/7);
# at 0.7 two anomalies and nothing else (P 1, R 2/3, F1 4/5); every other cut is worse.
LABELS = np.array([0, 0, 0, 1, 1, 1])
SCORES = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])


def test_the_cut_flags_what_the_hand_worked_best_cut_flags() -> None:
    threshold = choose_threshold(LABELS, SCORES)
    assert type(threshold) is float
    # Between the strongest unflagged score (0.2) and the weakest flagged one (0.4).
    assert 0.2 < threshold <= 0.4
    assert classification_metrics(LABELS, SCORES, threshold)["f1"] == pytest.approx(6 / 7)


def test_best_f1_is_the_hand_worked_maximum_and_no_cut_beats_it() -> None:
    assert best_f1(LABELS, SCORES) == pytest.approx(6 / 7)
    rng = np.random.default_rng(4)
    labels = (rng.random(200) < 0.1).astype(int)
    scores = np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1)
    assert best_f1(labels, scores) == pytest.approx(
        max(f1_score(labels, scores >= t) for t in np.unique(scores)))
    # A split without anomalies gives 0, as its F1 at any threshold is; all anomalies, 1.
    assert best_f1([0, 0, 0], np.array([0.1, 0.2, 0.3])) == 0.0
    assert best_f1([1, 1], np.array([0.1, 0.9])) == pytest.approx(1.0)


def _calibrated_draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from known probabilities (about 8% anomalies), and scores that rank
    like the probabilities but are over-confident, as a fine-tuned model's often are."""
    log_odds = rng.normal(-3.2, 1.6, n)
    labels = (rng.random(n) < expit(log_odds)).astype(int)
    return labels, expit(2.5 * log_odds + 1.0)


def _max_f1_cut(labels: np.ndarray, scores: np.ndarray) -> float:
    """The lowest score at which flagging gives the best F1, counted out directly."""
    cuts = np.unique(scores)
    flagged = scores[None, :] >= cuts[:, None]
    tp = (flagged & (labels == 1)).sum(axis=1)
    f1 = 2 * tp / (flagged.sum(axis=1) + labels.sum())
    return float(cuts[np.flatnonzero(np.isclose(f1, f1.max()))[0]])


@pytest.mark.parametrize("rows", [120, 800])
def test_the_smoothed_cut_beats_the_max_f1_cut_on_fresh_data_on_average(rows: int) -> None:
    # Forty validation splits (about 11 anomalies in 120 rows, 70 in 800), each judged on
    # its own fresh test draw of 4,000: the max-F1 cut chases each split's noise.
    rng = np.random.default_rng(0)
    smoothed, max_f1 = [], []
    for _ in range(40):
        val_labels, val_scores = _calibrated_draw(rng, rows)
        if val_labels.sum() < 2:
            continue
        test_labels, test_scores = _calibrated_draw(rng, 4000)
        smoothed.append(f1_score(test_labels, test_scores >= choose_threshold(val_labels,
                                                                              val_scores)))
        max_f1.append(f1_score(test_labels, test_scores >= _max_f1_cut(val_labels, val_scores)))
    assert len(smoothed) >= 35
    assert np.mean(smoothed) > np.mean(max_f1)


def test_classes_that_one_cut_separates_are_cut_inside_the_gap() -> None:
    rng = np.random.default_rng(8)
    labels = np.array([1] * 40 + [0] * 400)
    scores = np.where(labels == 1, 0.6 + rng.random(440) * 0.4, rng.random(440) * 0.5)
    cut = choose_threshold(labels, scores)
    # Not on the weakest anomaly, where a slightly weaker test anomaly would be missed.
    assert scores[labels == 0].max() < cut < scores[labels == 1].min()


def test_a_wide_gap_is_cut_with_a_margin_from_the_weakest_anomaly() -> None:
    # Seven anomalies, one of them missed; the weakest found one sits far above the
    # normal examples (as on 1,300 SMS messages with 50 spam, split seed 42).
    labels = np.array([1] * 7 + [0] * 186)
    rng = np.random.default_rng(9)
    scores = np.r_[[0.036, 0.979, 0.993, 0.999, 0.999, 0.999, 1.0],
                   expit(rng.normal(-6.0, 1.2, 186))]
    cut = choose_threshold(labels, scores)
    assert scores[labels == 0].max() < cut < 0.9
    assert classification_metrics(labels, scores, cut)["f1"] == pytest.approx(
        best_f1(labels, scores))


def test_the_cut_is_the_same_however_the_examples_are_batched(
        monkeypatch: pytest.MonkeyPatch) -> None:
    labels, scores = _calibrated_draw(np.random.default_rng(10), 500)
    whole = choose_threshold(labels, scores)
    assert choose_threshold(labels, scores) == whole  # seeded: the same cut every time
    monkeypatch.setattr(metrics, "_SMOOTHING_ROWS", 7)
    assert choose_threshold(labels, scores) == pytest.approx(whole, rel=1e-9)


@pytest.mark.parametrize(("target", "expected"), [(1.0, 0.7), (0.8, 0.7), (0.75, 0.4)])
def test_target_precision_takes_the_lowest_threshold_reaching_it(target: float,
                                                                 expected: float) -> None:
    threshold = choose_threshold(LABELS, SCORES, target_precision=target)
    assert threshold == pytest.approx(expected)
    assert classification_metrics(LABELS, SCORES, threshold)["precision"] >= target


def test_unreachable_target_precision_falls_back_to_max_f1_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    # The highest score is a normal example, so no cut reaches precision 0.9.
    labels, scores = np.array([1, 0, 1, 0]), np.array([0.3, 0.95, 0.5, 0.1])
    with caplog.at_level(logging.WARNING, logger="anomdet.metrics"):
        threshold = choose_threshold(labels, scores, target_precision=0.9)
    assert threshold == pytest.approx(choose_threshold(labels, scores))
    assert "no threshold reaches precision 0.9000" in caplog.text


def test_threshold_stays_above_zero_when_the_best_cut_is_a_zero_score() -> None:
    threshold = choose_threshold([1, 0, 1], np.array([0.0, 0.3, 0.8]))
    assert 0.0 < threshold <= 1e-300


@pytest.mark.parametrize(("labels", "scores", "message"), [
    ([1, 1, 1], [0.2, 0.5, 0.9], "needs both classes"),
    ([0, 1, 0], [0.2, 0.5], "one score per label"),
    ([0, 2, 1], [0.2, 0.5, 0.9], "positions 1"),
    ([0, 1, 1], [0.2, float("nan"), 0.9], "positions 1"),
    ([0, 1, 1], [0.2, 1.5, 0.9], "probabilities in [0, 1]"),
    ([0, 1, 1], [0.2, -0.01, 0.9], "positions 1 "),
])
def test_choose_threshold_rejects_bad_input_saying_what_is_wrong(
        labels: list[int], scores: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        choose_threshold(labels, np.array(scores))


def test_target_precision_outside_zero_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="target_precision"):
        choose_threshold(LABELS, SCORES, target_precision=1.5)


def test_classification_metrics_on_a_hand_worked_example() -> None:
    labels, scores = [1, 1, 0, 0, 1], np.array([0.9, 0.4, 0.6, 0.1, 0.5])
    # Flagged at 0.5 (a score equal to the threshold counts): positions 0, 2 and 4.
    metrics = classification_metrics(labels, scores, 0.5)
    assert (metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"]) == (2, 1, 1, 1)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(labels, scores))
    assert (metrics["n"], metrics["positives"]) == (5, 3)
    assert all(type(v) in (int, float) for v in metrics.values())
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics


def test_single_class_gives_nan_ranking_metrics_and_zero_not_error() -> None:
    metrics = classification_metrics([0, 0, 0], np.array([0.1, 0.2, 0.3]), 0.5)
    assert math.isnan(metrics["roc_auc"]) and math.isnan(metrics["pr_auc"])
    assert metrics["precision"] == 0.0 and metrics["recall"] == 0.0 and metrics["f1"] == 0.0
    assert metrics["accuracy"] == 1.0 and metrics["tn"] == 3


def test_classification_metrics_rejects_a_non_finite_threshold() -> None:
    with pytest.raises(ValueError, match="threshold"):
        classification_metrics(LABELS, SCORES, float("nan"))


SKLEARN_WEIGHTED = {
    "precision": lambda y, s, t, w: precision_score(y, s >= t, sample_weight=w, zero_division=0),
    "recall": lambda y, s, t, w: recall_score(y, s >= t, sample_weight=w, zero_division=0),
    "f1": lambda y, s, t, w: f1_score(y, s >= t, sample_weight=w, zero_division=0),
    "accuracy": lambda y, s, t, w: accuracy_score(y, s >= t, sample_weight=w),
    "pr_auc": lambda y, s, t, w: average_precision_score(y, s, sample_weight=w),
    "roc_auc": lambda y, s, t, w: roc_auc_score(y, s, sample_weight=w),
}


@pytest.mark.parametrize("metric", QUALITY_METRICS)
def test_resampled_metric_equals_scikit_learn_on_weighted_data(metric: str) -> None:
    rng = np.random.default_rng(7)
    labels = (rng.random(200) < 0.3).astype(int)
    # Rounded so that tied scores exercise the distinct-threshold handling.
    scores = np.round(np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1), 2)
    counts = rng.multinomial(200, np.full(200, 1 / 200), size=6)
    got = resampled_metric(labels, scores, 0.5, counts, metric)
    expected = [SKLEARN_WEIGHTED[metric](labels, scores, 0.5, w) for w in counts]
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_resampled_ranking_metric_is_nan_for_a_single_class_resample() -> None:
    counts = np.array([[1, 1, 0, 0], [1, 0, 1, 1]])
    got = resampled_metric([1, 1, 0, 0], np.array([0.9, 0.8, 0.3, 0.1]), 0.5, counts, "roc_auc")
    assert math.isnan(got[0]) and got[1] == pytest.approx(1.0)


def test_resampled_metric_rejects_unknown_metric_and_bad_counts() -> None:
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        resampled_metric(LABELS, SCORES, 0.5, np.ones((2, 6)), "auc")
    with pytest.raises(ValueError, match=r"shape \(resamples, 6\)"):
        resampled_metric(LABELS, SCORES, 0.5, np.ones((2, 5)), "f1")


def test_a_large_validation_set_is_resampled_fewer_times_each_class_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    labels, scores = _calibrated_draw(np.random.default_rng(11), 3000)
    weights = metrics._stratified_bootstrap_weights(labels, 200, seed=0)
    assert weights.shape == (200, 3000)
    # Every resample holds as many anomalies, and as many normal examples, as validation.
    assert (weights[:, labels == 1].sum(axis=1) == labels.sum()).all()
    assert (weights[:, labels == 0].sum(axis=1) == (labels == 0).sum()).all()
    monkeypatch.setattr(metrics, "_WEIGHT_BUDGET", 3000 * 50)
    assert metrics._stratified_bootstrap_weights(labels, 200, seed=0).shape == (50, 3000)
    assert 0.0 < choose_threshold(labels, scores) < 1.0
