"""The promotion rule: both models' results on the shared test split in, a decision out.

Modelled on TFX's Evaluator (value thresholds with lower and upper bounds; change
thresholds on diff = challenger - champion and ratio = diff / champion) and on
MLflow's validation thresholds, and stricter than both:

- floors bind the challenger on every run, the first one included;
- a TF-IDF + logistic-regression baseline, fitted on the same train split, is the bar
  of a first challenger (and, opted in, of every later one): it is refused only when the
  paired bootstrap shows the baseline better beyond noise;
- the primary metric must strictly improve: ties never promote;
- guard metrics may not regress by more than a tolerance;
- a paired bootstrap on the shared test split must show the gain is more than noise;
- a missing or NaN metric fails the check that needs it, it never passes one.

`decide` is a pure function: no I/O, the same inputs give the same decision.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from anomdet.metrics import (
    QUALITY_METRICS,
    as_binary_labels,
    as_scores,
    resampled_metric,
)
from db.models import PendingPromotion

logger = logging.getLogger(__name__)

FirstRunPolicy = Literal["beat_baseline", "promote_if_floors_pass", "always", "never"]
FIRST_RUN_POLICIES: tuple[str, ...] = ("beat_baseline", "promote_if_floors_pass", "always",
                                       "never")
# Below this many anomalies in the test split a metric is too coarse to be judged as a
# point figure: one anomaly more or less moves F1 by several points. Decisions then carry
# the challenger's own bootstrap interval.
FEW_ANOMALIES = 30
# Bounds and tolerances are compared with this slack so that a regression of exactly
# the allowed 0.02 (0.80 - 0.78 = 0.0200000000000000018 in floats) is not rejected.
_SLACK = 1e-9

# Resamples x examples held in memory at once (16 MB of float64 per array): bounds the
# bootstrap's memory on large test splits without slowing small ones.
RESAMPLE_CELLS_PER_CHUNK = 2_000_000

Bounds = tuple[float | None, float | None]


# eq=False: the fields hold numpy arrays, whose == is elementwise, so the generated
# __eq__/__hash__ would raise; identity is the only meaningful equality here.
@dataclass(frozen=True, eq=False)
class EvalResult:
    """One model on the shared test split: its metrics, per-example labels and scores."""

    metrics: dict[str, float]
    labels: np.ndarray
    scores: np.ndarray
    threshold: float

    def __post_init__(self) -> None:
        labels, scores = np.asarray(self.labels), np.asarray(self.scores)
        if labels.ndim != 1 or scores.shape != labels.shape:
            raise ValueError(f"EvalResult needs one score per label: labels have shape "
                             f"{labels.shape}, scores {scores.shape}")


def _bounds(name: str, value: Any) -> Bounds:
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ValueError(f"floor for {name!r} must be a (lower, upper) pair, got {value!r}; "
                         "use None for an open side, e.g. (0.5, None)") from None
    for side in (low, high):
        if side is not None and not (isinstance(side, int | float) and math.isfinite(side)):
            raise ValueError(f"floor bounds for {name!r} must be finite numbers or None, "
                             f"got {value!r}")
    if low is None and high is None:
        raise ValueError(f"floor for {name!r} has no bound on either side; remove it instead")
    if low is not None and high is not None and low > high:
        raise ValueError(f"floor for {name!r} has lower bound {low} above upper bound {high}")
    return (None if low is None else float(low), None if high is None else float(high))


def _known(names: Any, where: str) -> None:
    unknown = sorted(set(names) - set(QUALITY_METRICS))
    if unknown:
        raise ValueError(f"{where} names unknown metric(s) {', '.join(unknown)}; "
                         f"known metrics: {', '.join(QUALITY_METRICS)}")


def _non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class PromotionPolicy:
    """What a challenger must show to replace the champion (or to become the first one).

    floors: metric -> (lower, upper) bounds on the challenger's value, None = open.
    min_absolute_improvement / min_relative_improvement: on the primary metric, for
    diff = challenger - champion (which must also be > 0) and diff / champion.
    guard_metrics: metric -> largest allowed regression (champion - challenger).
    first_run: what to do when there is no champion yet ('beat_baseline': the floors hold
    and the challenger's primary metric is at or above the baseline's).
    must_beat_baseline: the baseline check binds later runs too.
    bootstrap_resamples: paired resamples of the test split; 0 disables the check.
    confidence: two-sided level of the bootstrap interval whose lower end must be > 0.

    Every field is required: the defaults live in `anomdet.settings.PromotionSettings`,
    whose `policy()` builds this object.
    """

    primary_metric: str
    floors: Mapping[str, Bounds]
    min_absolute_improvement: float
    min_relative_improvement: float
    guard_metrics: Mapping[str, float]
    first_run: FirstRunPolicy
    must_beat_baseline: bool
    bootstrap_resamples: int
    confidence: float
    seed: int

    def __post_init__(self) -> None:
        _known([self.primary_metric], "primary_metric")
        _known(self.floors, "floors")
        _known(self.guard_metrics, "guard_metrics")
        floors = {name: _bounds(name, value) for name, value in self.floors.items()}
        for name, tolerance in self.guard_metrics.items():
            _non_negative(f"guard tolerance of {name!r}", tolerance)
        _non_negative("min_absolute_improvement", self.min_absolute_improvement)
        _non_negative("min_relative_improvement", self.min_relative_improvement)
        if self.first_run not in FIRST_RUN_POLICIES:
            raise ValueError(f"first_run must be one of {', '.join(FIRST_RUN_POLICIES)}, "
                             f"got {self.first_run!r}")
        _check_resampling(self.bootstrap_resamples, self.confidence, self.seed, allow_zero=True)
        # Read-only views keep the frozen policy from being changed through its mappings.
        object.__setattr__(self, "floors", MappingProxyType(floors))
        object.__setattr__(self, "guard_metrics", MappingProxyType(
            {name: float(tol) for name, tol in self.guard_metrics.items()}))

    def __hash__(self) -> int:
        values = [getattr(self, f.name) for f in fields(self)]
        return hash(tuple(tuple(sorted(v.items())) if isinstance(v, Mapping) else v
                          for v in values))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Mapping proxies cannot be pickled; rebuild from plain dicts (Prefect may pickle).
        values = [getattr(self, f.name) for f in fields(self)]
        return (type(self), tuple(dict(v) if isinstance(v, Mapping) else v for v in values))


def _check_resampling(resamples: int, confidence: float, seed: int, *, allow_zero: bool) -> None:
    lowest = 0 if allow_zero else 1
    if isinstance(resamples, bool) or not isinstance(resamples, int | np.integer) \
            or resamples < lowest:
        raise ValueError(f"bootstrap resamples must be an integer >= {lowest}"
                         f"{' (0 disables the check)' if allow_zero else ''}, got {resamples!r}")
    if not (isinstance(confidence, int | float) and 0.5 < confidence < 1):
        raise ValueError(f"confidence must be strictly between 0.5 and 1, got {confidence!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r}")


@dataclass(frozen=True)
class Check:
    """One condition of the rule, whether it held, and the numbers behind it in words."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    """Promote or not, every check made, and one paragraph saying why."""

    promote: bool
    checks: tuple[Check, ...]
    reason: str
    bootstrap: dict[str, Any] | None = None
    # The challenger's own bootstrap interval, when the test split holds few anomalies.
    uncertainty: dict[str, Any] | None = None
    # The paired bootstrap of the challenger against the TF-IDF baseline, when measured.
    baseline_bootstrap: dict[str, Any] | None = None

    def failed(self) -> tuple[Check, ...]:
        """The checks that did not pass, in the order they were made."""
        return tuple(check for check in self.checks if not check.passed)


def _resample_counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """How often each of n examples is drawn in each of `rows` resamples of size n."""
    draws = rng.integers(0, n, size=(rows, n))
    flat = (draws + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n)


def paired_bootstrap(labels: np.ndarray, scores_a: np.ndarray, threshold_a: float,
                     scores_b: np.ndarray, threshold_b: float, metric: str, *,
                     resamples: int, confidence: float, seed: int) -> dict[str, Any]:
    """Paired bootstrap of metric(a) - metric(b) over the shared examples.

    Each resample draws the examples with replacement once, and both models are
    measured on that same draw, each at its own threshold, so the spread reflects
    only which examples happened to be in the test split. Returns metric,
    observed_diff (on the full split), mean_diff, ci_low and ci_high (two-sided
    percentile interval at `confidence`), p_value (share of resamples with diff <= 0),
    resamples, valid_resamples (those where the metric is defined for both) and
    confidence, all plain Python numbers.
    """
    y = as_binary_labels(labels)
    a, b = as_scores(scores_a, y.size), as_scores(scores_b, y.size)
    _check_resampling(resamples, confidence, seed, allow_zero=False)
    if metric not in QUALITY_METRICS:
        raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(QUALITY_METRICS)}")
    rng = np.random.default_rng(seed)
    # Chunks bound memory on large test splits; the draws stay a function of the seed.
    chunk = max(1, RESAMPLE_CELLS_PER_CHUNK // y.size)
    diffs = []
    for start in range(0, resamples, chunk):
        counts = _resample_counts(rng, min(chunk, resamples - start), y.size)
        diffs.append(resampled_metric(y, a, threshold_a, counts, metric)
                     - resampled_metric(y, b, threshold_b, counts, metric))
    every = np.ones((1, y.size))
    observed = (resampled_metric(y, a, threshold_a, every, metric)
                - resampled_metric(y, b, threshold_b, every, metric))[0]
    return _summarise(np.concatenate(diffs), float(observed), metric, resamples, confidence)


def _summarise(diffs: np.ndarray, observed: float, metric: str, resamples: int,
               confidence: float) -> dict[str, Any]:
    valid = diffs[np.isfinite(diffs)]
    tail = (1.0 - confidence) / 2
    if valid.size == 0:
        mean = low = high = p_value = math.nan
    else:
        mean = float(valid.mean())
        low, high = (float(q) for q in np.quantile(valid, [tail, 1.0 - tail]))
        p_value = float(np.mean(valid <= 0))
    return {"metric": metric, "observed_diff": observed, "mean_diff": mean, "ci_low": low,
            "ci_high": high, "p_value": p_value, "resamples": int(resamples),
            "valid_resamples": int(valid.size), "confidence": float(confidence)}


def _value(metrics: Mapping[str, Any], name: str) -> float | None:
    """The metric as a float, or None when it is missing, NaN or not a number."""
    value = metrics.get(name)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _unusable(metrics: Mapping[str, Any], name: str, who: str) -> str:
    if name not in metrics:
        return f"the {who} has no {name} metric, so this check cannot pass"
    return f"the {who}'s {name} is {metrics[name]!r}, not a number, so this check cannot pass"


def _floor_check(metrics: Mapping[str, Any], name: str, bounds: Bounds) -> Check:
    low, high = bounds
    value = _value(metrics, name)
    if value is None:
        return Check(f"floor:{name}", False, _unusable(metrics, name, "challenger"))
    if low is not None and value < low - _SLACK:
        return Check(f"floor:{name}", False,
                     f"challenger {name} {value:.4f} is below the floor {low:.4f}")
    if high is not None and value > high + _SLACK:
        return Check(f"floor:{name}", False,
                     f"challenger {name} {value:.4f} is above the ceiling {high:.4f}")
    shown = " and ".join(part for part in (
        None if low is None else f">= {low:.4f}", None if high is None else f"<= {high:.4f}")
        if part)
    return Check(f"floor:{name}", True, f"challenger {name} {value:.4f} is {shown}")


def _absolute_check(c: float, b: float, name: str, minimum: float) -> Check:
    diff = c - b
    label = f"improvement:{name}:absolute"
    numbers = f"challenger {name} {c:.4f} vs champion {b:.4f}, diff {diff:+.4f}"
    if diff <= 0:
        what = "a tie never promotes" if diff == 0 else "the challenger is worse"
        return Check(label, False, f"{numbers}: {what}")
    if diff < minimum - _SLACK:
        return Check(label, False, f"{numbers}, below the required {minimum:+.4f}")
    return Check(label, True, f"{numbers}, at least the required {minimum:+.4f} and above 0")


def _relative_check(c: float, b: float, name: str, minimum: float) -> Check:
    diff = c - b
    label = f"improvement:{name}:relative"
    if b == 0:
        # diff / 0 is undefined: say so, and let only a real gain over nothing count.
        verdict = "any gain above 0 counts" if diff > 0 else "and there is no gain"
        return Check(label, diff > 0, f"champion {name} is 0, so the relative change is "
                     f"undefined; judged on the absolute diff {diff:+.4f} alone: {verdict}")
    ratio = diff / b
    numbers = f"relative change of {name} {ratio:+.2%} (diff {diff:+.4f} / champion {b:.4f})"
    if diff <= 0:
        return Check(label, False, f"{numbers}: no improvement")
    if ratio < minimum - _SLACK:
        return Check(label, False, f"{numbers}, below the required {minimum:+.2%}")
    return Check(label, True, f"{numbers}, at least the required {minimum:+.2%}")


def _improvement_checks(challenger: Mapping[str, Any], champion: Mapping[str, Any],
                        policy: PromotionPolicy) -> list[Check]:
    name = policy.primary_metric
    c, b = _value(challenger, name), _value(champion, name)
    if c is None or b is None:
        detail = _unusable(challenger, name, "challenger") if c is None \
            else _unusable(champion, name, "champion")
        return [Check(f"improvement:{name}:absolute", False, detail),
                Check(f"improvement:{name}:relative", False, detail)]
    return [_absolute_check(c, b, name, policy.min_absolute_improvement),
            _relative_check(c, b, name, policy.min_relative_improvement)]


def _guard_check(challenger: Mapping[str, Any], champion: Mapping[str, Any], name: str,
                 tolerance: float) -> Check:
    c, b = _value(challenger, name), _value(champion, name)
    if c is None or b is None:
        detail = _unusable(challenger, name, "challenger") if c is None \
            else _unusable(champion, name, "champion")
        return Check(f"guard:{name}", False, detail)
    regression = b - c
    passed = regression <= tolerance + _SLACK
    if regression <= 0:
        detail = f"challenger {name} {c:.4f} did not regress from the champion's {b:.4f}"
    else:
        verdict = "within" if passed else "more than"
        detail = (f"challenger {name} {c:.4f} fell {regression:.4f} below the champion's "
                  f"{b:.4f}, {verdict} the allowed {tolerance:.4f}")
    return Check(f"guard:{name}", passed, detail)


def _bootstrap_check(challenger: EvalResult, champion: EvalResult,
                     policy: PromotionPolicy) -> tuple[Check, dict[str, Any] | None]:
    name = policy.primary_metric
    label = f"bootstrap:{name}"
    if policy.bootstrap_resamples == 0:
        return Check(label, True, "significance check disabled by the policy "
                     "(bootstrap_resamples=0); the gain was not tested against noise"), None
    result = paired_bootstrap(
        challenger.labels, challenger.scores, challenger.threshold, champion.scores,
        champion.threshold, name, resamples=policy.bootstrap_resamples,
        confidence=policy.confidence, seed=policy.seed)
    low, high = result["ci_low"], result["ci_high"]
    if not math.isfinite(low):
        return Check(label, False, f"{name} was undefined on every one of "
                     f"{result['resamples']} resamples, so no gain can be shown"), result
    passed = low > 0
    verdict = "lies above 0" if passed else "reaches 0 or below: the gain may be noise"
    detail = (f"{policy.confidence:.0%} interval of the {name} gain over "
              f"{result['valid_resamples']} paired resamples is [{low:+.4f}, {high:+.4f}] "
              f"and {verdict} (share of resamples without a gain {result['p_value']:.3f})")
    return Check(label, passed, detail), result


def _first_run_check(floors: list[Check], policy: PromotionPolicy,
                     baseline: Check | None = None) -> Check:
    failed = sum(not check.passed for check in floors)
    head = f"no champion yet; first-run policy '{policy.first_run}'"
    if policy.first_run == "beat_baseline":
        passed = failed == 0 and baseline is not None and baseline.passed
        return Check("first_run", passed, f"{head} promotes when every floor holds ({failed} "
                     f"of {len(floors)} failed) and the baseline is not better beyond noise "
                     f"({'yes' if baseline is not None and baseline.passed else 'no'})")
    if policy.first_run == "always":
        return Check("first_run", True, f"{head} promotes the first challenger whatever "
                     f"its floors say ({failed} of {len(floors)} failed)")
    if policy.first_run == "never":
        return Check("first_run", False, f"{head} never promotes automatically; "
                     "promote a version by hand to start")
    return Check("first_run", failed == 0, f"{head} promotes when every floor holds; "
                 f"{failed} of {len(floors)} failed")


def metric_interval(result: EvalResult, metric: str, *, resamples: int, confidence: float,
                    seed: int) -> dict[str, Any]:
    """The bootstrap interval of one model's metric on its test split.

    Keys: metric, value (on the full split), ci_low, ci_high, confidence, anomalies.
    """
    y = as_binary_labels(result.labels)
    scores = as_scores(result.scores, y.size)
    _check_resampling(resamples, confidence, seed, allow_zero=False)
    rng = np.random.default_rng(seed)
    chunk = max(1, RESAMPLE_CELLS_PER_CHUNK // max(1, y.size))
    values = np.concatenate([
        resampled_metric(y, scores, result.threshold,
                         _resample_counts(rng, min(chunk, resamples - start), y.size), metric)
        for start in range(0, resamples, chunk)])
    value = float(resampled_metric(y, scores, result.threshold, np.ones((1, y.size)), metric)[0])
    valid = values[np.isfinite(values)]
    tail = (1.0 - confidence) / 2
    low, high = ((float(q) for q in np.quantile(valid, [tail, 1.0 - tail])) if valid.size
                 else (math.nan, math.nan))
    return {"metric": metric, "value": value, "ci_low": low, "ci_high": high,
            "confidence": float(confidence), "anomalies": int(y.sum())}


def _found(result: EvalResult) -> int:
    """Test anomalies the model flags at its own threshold."""
    y = as_binary_labels(result.labels)
    return int(((as_scores(result.scores, y.size) >= result.threshold) & (y == 1)).sum())


def _baseline_check(challenger: EvalResult, baseline: EvalResult | None,
                    policy: PromotionPolicy) -> tuple[Check, dict[str, Any] | None]:
    """The challenger's primary metric against the baseline's on the same test split.

    Judged with the paired bootstrap that judges a challenger against a champion, at any
    test size: the check fails only when the baseline is better beyond noise, that is
    when the interval of the difference lies wholly below 0. A challenger a few test
    anomalies behind passes, and the detail says how many. Returns the check and the
    paired bootstrap (None when the policy disables resampling).
    """
    name = policy.primary_metric
    if baseline is None:
        return Check("baseline", False, "no baseline was measured on this test split, so "
                     "the challenger cannot be compared with it"), None
    _same_labels(challenger, baseline)
    c, b = _value(challenger.metrics, name), _value(baseline.metrics, name)
    if c is None or b is None:
        return Check("baseline", False, _unusable(challenger.metrics, name, "challenger")
                     if c is None else _unusable(baseline.metrics, name, "baseline")), None
    numbers = f"challenger {name} {c:.4f} vs TF-IDF baseline {b:.4f} ({c - b:+.4f})"
    paired = None if policy.bootstrap_resamples == 0 else paired_bootstrap(
        challenger.labels, challenger.scores, challenger.threshold, baseline.scores,
        baseline.threshold, name, resamples=policy.bootstrap_resamples,
        confidence=policy.confidence, seed=policy.seed)
    interval = "" if paired is None else (
        f"; the {policy.confidence:.0%} interval of the difference over "
        f"{paired['valid_resamples']} paired resamples is "
        f"[{paired['ci_low']:+.4f}, {paired['ci_high']:+.4f}]")
    if c >= b - _SLACK:
        return Check("baseline", True, f"{numbers}: at or above the baseline{interval}"), paired
    if paired is None:
        return Check("baseline", False, f"{numbers}: below the baseline (the significance "
                     "check is disabled, bootstrap_resamples=0)"), None
    high = paired["ci_high"]
    within = math.isfinite(high) and high >= -_SLACK
    anomalies = int(np.asarray(challenger.labels).sum())
    behind = (f"it finds {_found(challenger)} of the {anomalies} test anomalies, the "
              f"baseline {_found(baseline)}")
    verdict = ("the interval reaches 0, so the baseline is not better beyond noise"
               if within else "the interval lies wholly below 0: the baseline is better "
               "beyond noise")
    return Check("baseline", within, f"{numbers}: below the baseline ({behind}){interval}; "
                 f"{verdict}"), paired


def _same_labels(challenger: EvalResult, champion: EvalResult) -> None:
    a, b = np.asarray(challenger.labels), np.asarray(champion.labels)
    if a.shape != b.shape:
        raise ValueError(f"challenger and champion must be evaluated on the same test split: "
                         f"{a.size} challenger labels vs {b.size} champion labels; score both "
                         "models on one split, in one order")
    differ = np.flatnonzero(a != b)
    if differ.size:
        shown = ", ".join(str(i) for i in differ[:10])
        raise ValueError(f"challenger and champion labels differ at {differ.size} test "
                         f"positions (first: {shown}); score both models on the same split, "
                         "in the same order")


def _list(checks: list[Check]) -> str:
    # Details name their metric and numbers, so they read as a sentence without the ids.
    return "; ".join(check.detail for check in checks)


def _first_run_reason(promote: bool, checks: list[Check], policy: PromotionPolicy) -> str:
    floors = [check for check in checks if check.name.startswith("floor:")]
    failed = [check for check in floors if not check.passed]
    head = f"There is no champion yet, so the first-run policy '{policy.first_run}' decides."
    if policy.first_run == "never":
        return (f"{head} It never promotes automatically, so the challenger is not promoted; "
                f"for the record, {_list(floors) or 'no floors are configured'}.")
    if promote and failed:
        return (f"{head} It promotes the first challenger unconditionally, so it becomes the "
                f"champion although some floors failed: {_list(failed)}.")
    if promote:
        held = _list([c for c in checks if c.name.startswith("floor:") or c.name == "baseline"])
        trails = any(c.name == "baseline" and "below the baseline" in c.detail for c in checks)
        note = (" It trails the baseline on this test split, but by no more than the split's "
                "noise, so it is promoted; the next runs must beat it." if trails else "")
        return (f"{head} The challenger becomes the first champion; "
                f"{held or 'no floors are configured'}.{note}")
    failed += [check for check in checks if check.name == "baseline" and not check.passed]
    floor_hint = (", or lower the floors (ANOMDET_PROMOTION__F1_FLOOR, __PR_AUC_FLOOR)"
                  if failed and failed[0].name.startswith("floor:") else "")
    return (f"{head} The challenger is not promoted because {_list(failed)}. To get a first "
            "champion: label more anomalies (a larger test split judges more surely), train "
            "longer (`anomdet retrain --epochs N`) or from another base model "
            "(`--base-model`), or set ANOMDET_PROMOTION__FIRST_RUN=always to accept this model "
            f"as it is{floor_hint}.")


def _comparison_reason(promote: bool, checks: list[Check], challenger: EvalResult,
                       champion: EvalResult, policy: PromotionPolicy) -> str:
    name = policy.primary_metric
    c, b = _value(challenger.metrics, name), _value(champion.metrics, name)
    if c is not None and b is not None:
        head = (f"On the same {np.asarray(challenger.labels).size} test examples the "
                f"challenger's {name} is {c:.4f} against the champion's {b:.4f} "
                f"({c - b:+.4f}).")
    else:
        head = f"The challenger's and the champion's {name} could not both be read."
    failed = [check for check in checks if not check.passed]
    if failed:
        return (f"{head} The challenger is not promoted: {len(failed)} of {len(checks)} checks "
                f"failed: {_list(failed)}.")
    key = [check for check in checks if check.name.startswith(("improvement:", "bootstrap:"))]
    return (f"{head} The challenger is promoted: all {len(checks)} checks passed, floors and "
            f"guards included: {_list(key)}.")


def _uncertainty(challenger: EvalResult, policy: PromotionPolicy) -> dict[str, Any] | None:
    anomalies = int(np.asarray(challenger.labels).sum())
    if anomalies >= FEW_ANOMALIES:
        return None
    resamples = policy.bootstrap_resamples or 1000
    return metric_interval(challenger, policy.primary_metric, resamples=resamples,
                           confidence=policy.confidence, seed=policy.seed)


def _uncertainty_note(interval: dict[str, Any] | None) -> str:
    if interval is None:
        return ""
    return (f" The test split holds only {interval['anomalies']} anomalies (fewer than "
            f"{FEW_ANOMALIES}), so the challenger's {interval['metric']} of "
            f"{interval['value']:.4f} is a rough figure: its {interval['confidence']:.0%} "
            f"bootstrap interval is [{interval['ci_low']:.4f}, {interval['ci_high']:.4f}]. "
            "Label more anomalies to judge more surely.")


def decide(challenger: EvalResult, champion: EvalResult | None,
           policy: PromotionPolicy, baseline: EvalResult | None = None) -> Decision:
    """Decide whether the challenger replaces the champion.

    Floors always bind the challenger. Without a champion, `policy.first_run`
    decides ('always' promotes even when floors fail; the failures stay listed).
    With one, every check must pass: floors, the absolute and relative gain of the
    primary metric, the guards and the paired bootstrap. Both results must carry
    identical labels (the same test split, in the same order); ValueError otherwise.
    """
    checks = [_floor_check(challenger.metrics, name, bounds)
              for name, bounds in policy.floors.items()]
    interval = _uncertainty(challenger, policy)
    if champion is None:
        floors = list(checks)
        against, paired = None, None
        if policy.first_run == "beat_baseline" or baseline is not None:
            against, paired = _baseline_check(challenger, baseline, policy)
            checks.append(against)
        first_run = _first_run_check(floors, policy, against)
        checks.append(first_run)
        reason = _first_run_reason(first_run.passed, checks, policy) + _uncertainty_note(interval)
        logger.info("first-run decision: promote=%s", first_run.passed)
        return Decision(first_run.passed, tuple(checks), reason, None, interval, paired)
    _same_labels(challenger, champion)
    checks += _improvement_checks(challenger.metrics, champion.metrics, policy)
    checks += [_guard_check(challenger.metrics, champion.metrics, name, tolerance)
               for name, tolerance in policy.guard_metrics.items()]
    bootstrap_check, bootstrap = _bootstrap_check(challenger, champion, policy)
    checks.append(bootstrap_check)
    paired = None
    if policy.must_beat_baseline:
        against, paired = _baseline_check(challenger, baseline, policy)
        checks.append(against)
    promote = all(check.passed for check in checks)
    logger.info("decision: promote=%s, %d of %d checks failed", promote,
                sum(not check.passed for check in checks), len(checks))
    reason = _comparison_reason(promote, checks, challenger, champion, policy)
    return Decision(promote, tuple(checks), reason + _uncertainty_note(interval), bootstrap,
                    interval, paired)


@dataclass(frozen=True)
class PendingCandidate(PendingPromotion):
    """A candidate left by a run that stopped during its backfill, with what that run
    saw and decided (the fields of `PendingPromotion`, as the database holds them):
    enough to resume its promotion, or to tell that it went stale."""

    @classmethod
    def of(cls, pending: PendingPromotion) -> PendingCandidate:
        return cls(**{f.name: getattr(pending, f.name) for f in fields(pending)})

    @property
    def reason(self) -> str | None:
        """The promotion rule's reason, as the run that decided it recorded it."""
        return self.details.get("decision_reason")

    @property
    def checks(self) -> list[dict[str, Any]]:
        """The promotion rule's checks (name, passed, detail) as that run recorded them."""
        return list(self.details.get("checks") or [])

    def in_progress(self, timeout_minutes: float) -> bool:
        """Its run is still going, so the backfill is that run's to finish and the
        candidate is left alone. A run's row reads `running` until it ends; one whose
        process died on this host is closed when the next run starts, and one from
        another host is taken as dead once it passed the retrain timeout."""
        if self.run_state != "running" or self.run_started_at is None:
            return False
        started = self.run_started_at
        if started.tzinfo is None:  # SQLite gives back naive UTC times
            started = started.replace(tzinfo=UTC)
        return datetime.now(UTC) - started < timedelta(minutes=timeout_minutes)

    def stale_because(self, data_fingerprint: str, champion_id: int | None) -> str | None:
        """Why the candidate may no longer be promoted, or None when it may."""
        if self.data_fingerprint != data_fingerprint:
            return "the labelled records changed since its run evaluated it"
        if self.expected_champion_id != champion_id:
            return "the champion changed since its run evaluated it"
        return None
