"""Decision thresholds and quality figures for a binary anomaly scorer.

A score is the model's probability that an example is anomalous (class 1); an
example is predicted anomalous iff its score is at least the threshold.

scikit-learn is imported inside the functions that use it: the settings check the
promotion policy, which imports this module, and commands that only read the database
(`status`, `flagged`, `models`) should start without loading it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Metrics a promotion rule may compare: each is a "higher is better" figure in [0, 1].
QUALITY_METRICS: tuple[str, ...] = ("precision", "recall", "f1", "pr_auc", "roc_auc", "accuracy")
THRESHOLD_METRICS: frozenset[str] = frozenset({"precision", "recall", "f1", "accuracy"})
RANKING_METRICS: frozenset[str] = frozenset({"pr_auc", "roc_auc"})

# Precision values such as 7/10 must meet a target written as 0.7 despite rounding.
_PRECISION_SLACK = 1e-12
# Float32 softmax outputs may overshoot [0, 1] by a rounding step; that is not an error.
_SCORE_SLACK = 1e-6
# How many offending positions an error message lists before it stops.
_SHOWN_POSITIONS = 10


def _positions(mask: np.ndarray) -> str:
    where = np.flatnonzero(mask)
    shown = ", ".join(str(i) for i in where[:_SHOWN_POSITIONS])
    more = f" and {len(where) - _SHOWN_POSITIONS} more" if len(where) > _SHOWN_POSITIONS else ""
    return f"{shown}{more}"


def as_binary_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Labels as a 1-D int64 array of 0/1; ValueError naming the bad positions otherwise."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence of 0/1, got shape {array.shape}")
    bad = ~np.isin(array, (0, 1))
    if bad.any():
        example = array[bad][:1].tolist()[0]
        raise ValueError(f"labels must be 0 (normal) or 1 (anomalous); the labels at "
                         f"positions {_positions(bad)} are not (e.g. {example!r}); "
                         "map the label column to 0/1 before evaluating")
    return array.astype(np.int64)


def as_scores(scores: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """Scores as a 1-D float64 array of n probabilities; ValueError otherwise."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1 or array.size != n:
        raise ValueError(f"scores must be 1-D with one score per label: {n} labels but scores "
                         f"have shape {array.shape}")
    bad = ~np.isfinite(array) | (array < -_SCORE_SLACK) | (array > 1.0 + _SCORE_SLACK)
    if bad.any():
        raise ValueError(f"scores must be probabilities in [0, 1]; the scores at positions "
                         f"{_positions(bad)} are not (e.g. {float(array[bad][0])!r}); pass "
                         "softmax/sigmoid outputs, not logits")
    return np.clip(array, 0.0, 1.0)


def _both_classes(labels: np.ndarray, what: str) -> None:
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        only = "anomalous (1)" if positives else "normal (0)"
        raise ValueError(f"{what} needs both classes, but all {labels.size} labels are {only}; "
                         "use a larger or stratified validation split")


def _f1_from_curve(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)


def best_f1(labels: Sequence[int] | np.ndarray, scores: np.ndarray) -> float:
    """The highest F1 that any threshold reaches on these labels and scores.

    Measured on a test split it is no honest quality figure, since the threshold is
    chosen by the very labels it is judged on; beside the F1 at the threshold chosen
    on validation, it tells how much is lost to the choice of threshold and how much
    to the ranking itself. Without anomalies it is 0, as `classification_metrics`'s F1 is.
    """
    y = as_binary_labels(labels)
    s = as_scores(scores, y.size)
    if not y.any():
        return 0.0
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, s)
    return float(_f1_from_curve(precision, recall).max())


def platt_scaling(labels: np.ndarray, log_odds: np.ndarray, *,
                  regularisation_c: float = 1.0) -> tuple[float, float] | None:
    """Slope and intercept of a logistic regression of the labels on the log-odds, or None
    where the fit is unusable (a non-positive or non-finite slope)."""
    # Written out because scikit-learn's Platt scaling (`CalibratedClassifierCV`) calibrates
    # an estimator it refits or wraps, not a column of scores that is already there.
    from sklearn.linear_model import LogisticRegression

    platt = LogisticRegression(C=regularisation_c, max_iter=1000).fit(
        np.asarray(log_odds, dtype=np.float64).reshape(-1, 1), labels)
    slope, intercept = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    if not (math.isfinite(slope) and math.isfinite(intercept) and slope > 0):
        return None
    return slope, intercept


# Resamples of the validation set behind the smoothed bootstrap cut, and the cuts it
# weighs: evenly spaced in log-odds between the lowest and the highest score.
BOOTSTRAP_RESAMPLES = 200
CUT_GRID = 400
# Scores are clipped this far from 0 and 1 for the smoothing: past it, log-odds tell
# rounding apart, not examples.
_SMOOTHING_CLIP = 1e-6
# Validation examples whose smoothed flags are held in memory at once.
_SMOOTHING_ROWS = 4096
# Bootstrap weights held at once (float32): past 100,000 validation examples the
# resamples are fewer, down to 20; on so many examples a resample moves the curve little.
_WEIGHT_BUDGET = 20_000_000
_MIN_RESAMPLES = 20


def _bandwidth(log_odds: np.ndarray) -> float | None:
    """Silverman's rule of thumb for a Gaussian kernel over these log-odds; None when
    they have no spread to measure."""
    if log_odds.size < 2:
        return None
    q75, q25 = np.percentile(log_odds, [75, 25])
    sd, iqr = float(log_odds.std(ddof=1)), float(q75 - q25) / 1.349
    spread = min(sd, iqr) if iqr > 0 else sd
    return 0.9 * spread * log_odds.size ** -0.2 if spread > 0 else None


def _stratified_bootstrap_weights(labels: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """How often each example is drawn in each resample (one row a resample): each class
    drawn with replacement as many times as it has members. Fewer rows than `resamples`
    where they would pass `_WEIGHT_BUDGET`."""
    resamples = max(min(resamples, _WEIGHT_BUDGET // labels.size), _MIN_RESAMPLES)
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, labels.size), dtype=np.float32)
    for c in (1, 0):
        members = np.flatnonzero(labels == c)
        weights[:, members] = rng.multinomial(
            members.size, np.full(members.size, 1.0 / members.size), size=resamples)
    return weights


def smoothed_bootstrap_threshold(labels: np.ndarray, scores: np.ndarray, *,
                                 resamples: int = BOOTSTRAP_RESAMPLES, grid: int = CUT_GRID,
                                 seed: int = 0) -> float:
    """The cut with the highest F1 averaged over smoothed bootstrap resamples of the
    validation examples.

    The max-F1 cut of the validation set itself rests on the one or two examples at the
    peak of a jagged curve, and where a gap separates the weakest anomaly from the
    strongest normal example it sits at the gap's top edge, however wide the gap: test
    anomalies a little weaker than any validation anomaly are missed. Here each resample
    draws the anomalies and the normal examples with replacement, as many of each as
    there are, and moves each drawn score by Gaussian noise in log-odds (a kernel per
    class, Silverman's bandwidth), so a cut is weighed on the sets the validation set
    could as well have been: ties are broken by the densities on each side, and a cut in
    a gap keeps a margin from both classes that grows with their spread. The expected
    flags under the noise are computed exactly (normal CDFs), not drawn.

    Written out because scikit-learn's threshold tuning (`TunedThresholdClassifierCV`)
    refits an estimator and scipy's `bootstrap` resamples one statistic, and neither
    scores a column of given scores at every cut.
    """
    # ndtr is the standard normal CDF; scipy.stats would add seconds of import.
    from scipy.special import expit, logit, ndtr

    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    z = logit(np.clip(s, _SMOOTHING_CLIP, 1.0 - _SMOOTHING_CLIP))
    pooled = _bandwidth(z) or 1.0
    width = {c: _bandwidth(z[y == c]) or pooled for c in (0, 1)}
    bandwidth = np.where(y == 1, width[1], width[0])
    cuts = np.linspace(z.min(), z.max(), grid)
    weights = _stratified_bootstrap_weights(y, resamples, seed)
    resamples = weights.shape[0]
    true_flags = np.zeros((resamples, grid))
    flags = np.zeros((resamples, grid))
    for start in range(0, z.size, _SMOOTHING_ROWS):
        rows = slice(start, start + _SMOOTHING_ROWS)
        # Each example's chance of lying at or above each cut once its noise is added.
        above = ndtr((z[rows, None] - cuts[None, :]) / bandwidth[rows, None])
        flags += weights[:, rows] @ above
        true_flags += weights[:, rows] @ (above * y[rows, None])
    # F1 = 2 tp / (flagged + anomalies); every resample holds all the anomalies.
    mean_f1 = (2 * true_flags / (flags + int(y.sum()))).mean(axis=0)
    best = int(np.argmax(mean_f1))
    # The lowest cut flags every example, those clipped to it included.
    return float(s.min()) if best == 0 else float(expit(cuts[best]))


def choose_threshold(labels: Sequence[int] | np.ndarray, scores: np.ndarray, *,
                     target_precision: float | None = None) -> float:
    """Pick the decision threshold on validation scores.

    By default the cut with the best F1 averaged over smoothed bootstrap resamples of
    the validation examples (see `smoothed_bootstrap_threshold`). With
    `target_precision`, the lowest threshold whose precision reaches the target, i.e. the
    largest recall at that precision; if no threshold reaches it, a warning is logged
    and the default cut is returned. The result lies in (0, 1].
    """
    y = as_binary_labels(labels)
    s = as_scores(scores, y.size)
    _both_classes(y, "choosing a threshold")
    if target_precision is not None and not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision!r}")
    if target_precision is not None:
        from sklearn.metrics import precision_recall_curve

        precision, _, thresholds = precision_recall_curve(y, s)
        # The curve's last point (precision 1, recall 0) has no threshold of its own.
        reached = np.flatnonzero(precision[:-1] >= target_precision - _PRECISION_SLACK)
        if reached.size:
            # Thresholds ascend, so the first one reaching the target has the most recall.
            return max(float(thresholds[reached[0]]), math.ulp(0.0))
        logger.warning("no threshold reaches precision %.4f on %d validation examples "
                       "(best %.4f); using the F1 threshold instead",
                       target_precision, y.size, float(precision.max()))
    # A threshold of 0 would flag everything; the smallest positive float flags every
    # example with any probability at all.
    return min(max(smoothed_bootstrap_threshold(y, s), math.ulp(0.0)), 1.0)


def classification_metrics(labels: Sequence[int] | np.ndarray, scores: np.ndarray,
                           threshold: float) -> dict[str, float]:
    """Quality of `scores` at `threshold`, as plain JSON-serialisable numbers.

    Keys: precision, recall, f1, pr_auc (average precision), roc_auc, accuracy
    (floats, 0 where a ratio's denominator is 0) and n, positives, tp, fp, fn, tn
    (ints). pr_auc and roc_auc are NaN when the labels hold a single class, since
    ranking quality is undefined without both classes.
    """
    y = as_binary_labels(labels)
    s = as_scores(scores, y.size)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    predicted = (s >= threshold).astype(np.int64)
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    one_class = y.min() == y.max()
    return {
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "pr_auc": math.nan if one_class else float(average_precision_score(y, s)),
        "roc_auc": math.nan if one_class else float(roc_auc_score(y, s)),
        "accuracy": float(accuracy_score(y, predicted)),
        "n": int(y.size), "positives": int(y.sum()),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=denominator > 0)


def _weighted_threshold_metric(y: np.ndarray, predicted: np.ndarray, weights: np.ndarray,
                               metric: str) -> np.ndarray:
    positive, hit = y.astype(bool), predicted.astype(bool)
    tp = weights @ (positive & hit).astype(np.float64)
    fp = weights @ (~positive & hit).astype(np.float64)
    fn = weights @ (positive & ~hit).astype(np.float64)
    if metric == "precision":
        return _ratio(tp, tp + fp)
    if metric == "recall":
        return _ratio(tp, tp + fn)
    if metric == "f1":
        return _ratio(2 * tp, 2 * tp + fp + fn)
    tn = weights @ (~positive & ~hit).astype(np.float64)
    return _ratio(tp + tn, weights.sum(axis=1))


def _weighted_ranking_metric(y: np.ndarray, s: np.ndarray, weights: np.ndarray,
                             metric: str) -> np.ndarray:
    # The same construction as scikit-learn's binary curve with sample weights: sort by
    # score, descending, and cut at each distinct score.
    order = np.argsort(-s, kind="mergesort")
    y_sorted, s_sorted, w_sorted = y[order], s[order], weights[:, order]
    cuts = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(w_sorted * y_sorted, axis=1)[:, cuts]
    fps = np.cumsum(w_sorted * (1 - y_sorted), axis=1)[:, cuts]
    total_pos, total_neg = tps[:, -1:], fps[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tps / total_pos
        if metric == "pr_auc":
            precision = _ratio(tps, tps + fps)
            steps = np.diff(recall, axis=1, prepend=0.0)
            value = np.sum(steps * precision, axis=1)
        else:
            fpr = np.concatenate([np.zeros_like(total_neg), fps / total_neg], axis=1)
            tpr = np.concatenate([np.zeros_like(total_pos), recall], axis=1)
            value = np.trapezoid(tpr, fpr, axis=1)
    undefined = (total_pos[:, 0] == 0) | (total_neg[:, 0] == 0)
    return np.where(undefined, np.nan, value)


def resampled_metric(labels: np.ndarray, scores: np.ndarray, threshold: float,
                     counts: np.ndarray, metric: str) -> np.ndarray:
    """One metric per bootstrap resample, given how often each example was drawn.

    `counts` has shape (resamples, n): row r says how many times each example
    appears in resample r. A resample with repeats is the original data weighted by
    those counts, so row r's value equals the scikit-learn metric on that resample.
    Written with numpy rather than calling scikit-learn per resample because a
    paired bootstrap needs thousands of evaluations and the per-call overhead
    would dominate; the tests check agreement with scikit-learn's weighted metrics.
    Ranking metrics are NaN for a resample that holds a single class.
    """
    y = as_binary_labels(labels)
    s = as_scores(scores, y.size)
    weights = np.asarray(counts, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != y.size:
        raise ValueError(f"counts must have shape (resamples, {y.size}), got {weights.shape}")
    if metric in THRESHOLD_METRICS:
        return _weighted_threshold_metric(y, s >= threshold, weights, metric)
    if metric in RANKING_METRICS:
        return _weighted_ranking_metric(y, s, weights, metric)
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(QUALITY_METRICS)}")
