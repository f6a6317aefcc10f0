"""The promotion rule: every check fails closed, ties never promote, noise never wins."""

from __future__ import annotations

import dataclasses
import math
import pickle
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import f1_score

from anomdet.metrics import classification_metrics
from anomdet.promotion import (
    Check,
    Decision,
    EvalResult,
    PromotionPolicy,
    decide,
    paired_bootstrap,
)
from tests.configs import promotion_policy

LABELS = np.array([0, 1] * 10)
SCORES = np.linspace(0.05, 0.95, 20)
GOOD = {"f1": 0.80, "pr_auc": 0.85, "recall": 0.75, "precision": 0.85}
# Rule tests below judge the metric dictionaries alone; the bootstrap has its own tests.
# The floors and first-run policy these tests were written for, stated explicitly.
NO_BOOTSTRAP = promotion_policy(bootstrap_resamples=0,
                                floors={"f1": (0.5, None), "pr_auc": (0.5, None)},
                                first_run="promote_if_floors_pass")


def _result(metrics: dict[str, Any], labels: np.ndarray = LABELS,
            scores: np.ndarray = SCORES, threshold: float = 0.5) -> EvalResult:
    return EvalResult(metrics=metrics, labels=labels, scores=scores, threshold=threshold)


def _decide(challenger: dict[str, Any], champion: dict[str, Any] | None,
            policy: PromotionPolicy = NO_BOOTSTRAP) -> Decision:
    return decide(_result(challenger), None if champion is None else _result(champion), policy)


def _check(decision: Decision, name: str) -> Check:
    return next(check for check in decision.checks if check.name == name)


def _failed(decision: Decision) -> list[str]:
    return [check.name for check in decision.failed()]


def test_a_better_challenger_passes_every_rule_check() -> None:
    decision = _decide({**GOOD, "f1": 0.85}, GOOD)
    assert decision.promote and decision.failed() == ()
    assert [c.name for c in decision.checks] == [
        "floor:f1", "floor:pr_auc", "improvement:f1:absolute", "improvement:f1:relative",
        "guard:pr_auc", "guard:recall", "bootstrap:f1"]
    assert "disabled" in _check(decision, "bootstrap:f1").detail
    assert "0.8500" in decision.reason and "0.8000" in decision.reason


def test_equal_metrics_never_promote() -> None:
    decision = _decide(GOOD, dict(GOOD))
    assert not decision.promote
    assert _failed(decision) == ["improvement:f1:absolute", "improvement:f1:relative"]
    assert "tie" in _check(decision, "improvement:f1:absolute").detail


def test_worse_challenger_is_not_promoted_and_the_reason_gives_numbers() -> None:
    decision = _decide({**GOOD, "f1": 0.70}, GOOD)
    assert not decision.promote
    assert "-0.1000" in decision.reason and "not promoted" in decision.reason


@pytest.mark.parametrize("missing_from", ["challenger", "champion"])
def test_a_missing_metric_fails_its_check(missing_from: str) -> None:
    without = {k: v for k, v in GOOD.items() if k != "recall"}
    challenger, champion = ({**without, "f1": 0.9}, GOOD) if missing_from == "challenger" \
        else ({**GOOD, "f1": 0.9}, without)
    decision = _decide(challenger, champion)
    assert not decision.promote
    assert _failed(decision) == ["guard:recall"]
    assert f"the {missing_from} has no recall metric" in _check(decision, "guard:recall").detail


def test_a_missing_primary_metric_fails_both_improvement_checks() -> None:
    decision = _decide({**GOOD, "f1": 0.9}, {"pr_auc": 0.85, "recall": 0.75})
    assert _failed(decision) == ["improvement:f1:absolute", "improvement:f1:relative"]
    assert "champion has no f1" in decision.reason


def test_nan_metrics_fail_and_never_pass() -> None:
    decision = _decide({**GOOD, "f1": 0.9, "pr_auc": math.nan}, GOOD)
    assert not decision.promote
    assert _failed(decision) == ["floor:pr_auc", "guard:pr_auc"]
    assert "nan" in _check(decision, "floor:pr_auc").detail
    champion_nan = _decide({**GOOD, "f1": 0.9}, {**GOOD, "f1": math.nan})
    assert _failed(champion_nan) == ["improvement:f1:absolute", "improvement:f1:relative"]


def test_zero_baseline_is_judged_on_the_absolute_gain_and_says_so() -> None:
    policy = dataclasses.replace(NO_BOOTSTRAP, min_relative_improvement=0.5,
                                 floors={"f1": (0.1, None)}, guard_metrics={})
    decision = _decide({"f1": 0.6}, {"f1": 0.0}, policy)
    relative = _check(decision, "improvement:f1:relative")
    assert decision.promote and relative.passed
    assert "undefined" in relative.detail and "undefined" in decision.reason
    # No gain over a zero baseline is still no gain.
    stuck = _decide({"f1": 0.0}, {"f1": 0.0}, dataclasses.replace(policy, floors={}))
    assert not _check(stuck, "improvement:f1:relative").passed


def test_minimum_absolute_improvement() -> None:
    policy = dataclasses.replace(NO_BOOTSTRAP, min_absolute_improvement=0.02)
    assert _failed(_decide({**GOOD, "f1": 0.81}, GOOD, policy)) == ["improvement:f1:absolute"]
    # 0.82 - 0.80 is 0.01999... in floats; exactly the minimum must still pass.
    assert _decide({**GOOD, "f1": 0.82}, GOOD, policy).promote


def test_minimum_relative_improvement() -> None:
    policy = dataclasses.replace(NO_BOOTSTRAP, min_relative_improvement=0.10)
    # 0.84 over 0.80 is +5%, 0.88 over 0.80 is +10%.
    assert _failed(_decide({**GOOD, "f1": 0.84}, GOOD, policy)) == ["improvement:f1:relative"]
    assert _decide({**GOOD, "f1": 0.88}, GOOD, policy).promote


def test_guard_regression_beyond_tolerance_blocks_promotion() -> None:
    decision = _decide({**GOOD, "f1": 0.9, "pr_auc": 0.82}, GOOD)
    assert _failed(decision) == ["guard:pr_auc"]
    assert "fell 0.0300" in _check(decision, "guard:pr_auc").detail
    # A regression of exactly the tolerance (0.02) is allowed.
    assert _decide({**GOOD, "f1": 0.9, "pr_auc": 0.83}, GOOD).promote


def test_floors_bind_below_and_above() -> None:
    policy = dataclasses.replace(NO_BOOTSTRAP, floors={"f1": (0.5, None),
                                                       "recall": (0.2, 0.9)})
    low = _decide({**GOOD, "f1": 0.45}, None, policy)
    assert _failed(low) == ["floor:f1", "first_run"]
    assert "below the floor 0.5000" in _check(low, "floor:f1").detail
    high = _decide({**GOOD, "recall": 0.95}, None, policy)
    assert "above the ceiling 0.9000" in _check(high, "floor:recall").detail
    assert not high.promote
    assert _decide({**GOOD, "recall": 0.9}, None, policy).promote


def test_floors_also_bind_when_a_champion_exists() -> None:
    decision = _decide({**GOOD, "f1": 0.45}, {**GOOD, "f1": 0.40})
    assert _failed(decision) == ["floor:f1"]


def test_first_run_promote_if_floors_pass() -> None:
    promoted = _decide(GOOD, None)
    assert promoted.promote and promoted.bootstrap is None
    assert "first champion" in promoted.reason
    rejected = _decide({**GOOD, "pr_auc": 0.4}, None)
    assert not rejected.promote and _failed(rejected) == ["floor:pr_auc", "first_run"]


def test_first_run_always_promotes_but_keeps_the_failed_floors_on_record() -> None:
    policy = dataclasses.replace(NO_BOOTSTRAP, first_run="always")
    decision = _decide({**GOOD, "f1": 0.1}, None, policy)
    assert decision.promote
    assert _failed(decision) == ["floor:f1"]
    assert "although" in decision.reason


def test_first_run_never_does_not_promote_even_a_perfect_model() -> None:
    policy = dataclasses.replace(NO_BOOTSTRAP, first_run="never")
    perfect = {"f1": 1.0, "pr_auc": 1.0, "recall": 1.0}
    decision = _decide(perfect, None, policy)
    assert not decision.promote and _failed(decision) == ["first_run"]


def test_mismatched_labels_raise() -> None:
    other = LABELS.copy()
    other[3] = 1 - other[3]
    with pytest.raises(ValueError, match=r"differ at 1 test positions \(first: 3\)"):
        decide(_result(GOOD), _result(GOOD, labels=other), NO_BOOTSTRAP)
    with pytest.raises(ValueError, match="20 challenger labels vs 19 champion"):
        decide(_result(GOOD), _result(GOOD, labels=LABELS[:-1], scores=SCORES[:-1]),
               NO_BOOTSTRAP)


def _evaluated(labels: np.ndarray, scores: np.ndarray) -> EvalResult:
    scores = np.clip(scores, 0, 1)
    return EvalResult(classification_metrics(labels, scores, 0.5), labels, scores, 0.5)


def _champion(n: int = 500, seed: int = 0) -> EvalResult:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    return _evaluated(labels, labels * 0.3 + rng.random(n) * 0.7)


def _noisy(scores: np.ndarray, seed: int) -> np.ndarray:
    return np.clip(scores + np.random.default_rng(seed).normal(0, 0.1, scores.size), 0, 1)


def test_bootstrap_lets_a_clearly_better_challenger_win() -> None:
    champion = _champion()
    rng = np.random.default_rng(1)
    challenger = _evaluated(champion.labels, champion.labels * 0.6 + rng.random(500) * 0.4)
    decision = decide(challenger, champion, promotion_policy())
    assert decision.promote, decision.reason
    boot = decision.bootstrap
    assert boot is not None and boot["ci_low"] > 0 and boot["p_value"] == 0.0
    assert set(boot) >= {"metric", "mean_diff", "ci_low", "ci_high", "p_value",
                         "resamples", "confidence"}
    assert boot["resamples"] == 1000 and boot["metric"] == "f1"


def test_bootstrap_rejects_a_challenger_that_is_the_champion_plus_noise() -> None:
    champion = _champion()
    # A noisy copy whose observed f1 happens to be a little higher: the rule checks pass,
    # only the bootstrap can tell that the gain is noise.
    for seed in range(100):
        challenger = _evaluated(champion.labels, _noisy(champion.scores, seed))
        if challenger.metrics["f1"] > champion.metrics["f1"]:
            break
    relaxed = promotion_policy(floors={}, guard_metrics={})
    decision = decide(challenger, champion, relaxed)
    assert not decision.promote
    assert _failed(decision) == ["bootstrap:f1"]
    assert decision.bootstrap is not None and decision.bootstrap["ci_low"] <= 0
    assert "noise" in _check(decision, "bootstrap:f1").detail


def test_noisy_copies_of_the_champion_rarely_pass_the_bootstrap() -> None:
    # About half of the copies score a higher f1 by luck; a 95% interval should let
    # through only a few percent of them.
    champion = _champion()
    wins = 0
    for seed in range(30):
        result = paired_bootstrap(champion.labels, _noisy(champion.scores, seed), 0.5,
                                  champion.scores, 0.5, "f1", resamples=300,
                                  confidence=0.95, seed=seed)
        wins += result["ci_low"] > 0
    assert wins <= 2


def test_identical_models_fail_the_bootstrap() -> None:
    champion = _champion()
    result = paired_bootstrap(champion.labels, champion.scores, 0.5, champion.scores, 0.5,
                              "f1", resamples=200, confidence=0.95, seed=0)
    assert result["ci_low"] == 0.0 and result["ci_high"] == 0.0 and result["p_value"] == 1.0


def test_bootstrap_is_deterministic_under_its_seed() -> None:
    champion, challenger = _champion(seed=0), _champion(seed=0)
    noisy = np.clip(challenger.scores + np.random.default_rng(5).normal(0, 0.1, 500), 0, 1)
    args = (champion.labels, noisy, 0.5, champion.scores, 0.5, "f1")
    first = paired_bootstrap(*args, resamples=300, confidence=0.9, seed=11)
    assert paired_bootstrap(*args, resamples=300, confidence=0.9, seed=11) == first
    assert paired_bootstrap(*args, resamples=300, confidence=0.9, seed=12) != first


def test_bootstrap_matches_a_plain_resampling_loop() -> None:
    champion = _champion(n=120)
    rng = np.random.default_rng(2)
    other = np.clip(champion.scores + rng.normal(0, 0.15, 120), 0, 1)
    result = paired_bootstrap(champion.labels, other, 0.45, champion.scores, 0.5, "f1",
                              resamples=100, confidence=0.9, seed=4)
    # The same draws, made one resample at a time and scored by scikit-learn.
    draws = np.random.default_rng(4).integers(0, 120, size=(100, 120))
    y = champion.labels
    diffs = np.array([f1_score(y[i], other[i] >= 0.45) - f1_score(y[i], champion.scores[i] >= 0.5)
                      for i in draws])
    assert result["mean_diff"] == pytest.approx(diffs.mean())
    assert result["ci_low"] == pytest.approx(np.quantile(diffs, 0.05))
    assert result["ci_high"] == pytest.approx(np.quantile(diffs, 0.95))
    assert result["p_value"] == pytest.approx(np.mean(diffs <= 0))


def test_bootstrap_on_a_ranking_primary_metric() -> None:
    champion = _champion()
    better = _evaluated(champion.labels,
                        champion.labels * 0.6 + np.random.default_rng(1).random(500) * 0.4)
    decision = decide(better, champion, promotion_policy(primary_metric="pr_auc",
                                                         bootstrap_resamples=300))
    assert decision.promote and decision.bootstrap is not None
    assert decision.bootstrap["metric"] == "pr_auc" and decision.bootstrap["ci_low"] > 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"primary_metric": "auc"}, "unknown metric"),
    ({"floors": {"f2": (0.5, None)}}, "floors names unknown"),
    ({"guard_metrics": {"loss": 0.1}}, "guard_metrics names unknown"),
    ({"floors": {"f1": (0.9, 0.5)}}, "lower bound 0.9 above upper bound 0.5"),
    ({"floors": {"f1": (None, None)}}, "no bound on either side"),
    ({"floors": {"f1": 0.5}}, r"\(lower, upper\) pair"),
    ({"guard_metrics": {"recall": -0.1}}, "guard tolerance"),
    ({"min_absolute_improvement": -0.01}, "min_absolute_improvement"),
    ({"min_relative_improvement": math.nan}, "min_relative_improvement"),
    ({"first_run": "sometimes"}, "first_run"),
    ({"bootstrap_resamples": -1}, "resamples"),
    ({"bootstrap_resamples": True}, "resamples"),
    ({"confidence": 0.5}, "confidence"),
    ({"confidence": 1.0}, "confidence"),
])
def test_policy_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        promotion_policy(**kwargs)


def test_policy_is_frozen_hashable_and_picklable() -> None:
    policy = promotion_policy(floors={"f1": [0.6, None]})
    assert policy.floors["f1"] == (0.6, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.seed = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.floors["recall"] = (0.1, None)  # type: ignore[index]
    assert hash(policy) == hash(promotion_policy(floors={"f1": (0.6, None)}))
    assert pickle.loads(pickle.dumps(policy)) == policy


def test_the_settings_are_the_policys_only_defaults() -> None:
    from anomdet.settings import PromotionSettings

    with pytest.raises(TypeError):
        PromotionPolicy()  # type: ignore[call-arg]
    settings = PromotionSettings(primary_metric="pr_auc", f1_floor=0.4,
                                 guard_recall_tolerance=0.1, first_run="always")
    policy = settings.policy()
    assert policy.primary_metric == "pr_auc" and policy.first_run == "always"
    assert dict(policy.floors) == {"f1": (0.4, None)}
    assert dict(policy.guard_metrics) == {"pr_auc": settings.guard_pr_auc_tolerance,
                                          "recall": 0.1}


# --- the TF-IDF baseline as the first run's bar -------------------------------------------

BASELINE_POLICY = promotion_policy(bootstrap_resamples=200, first_run="beat_baseline")


def _scored(labels: np.ndarray, flagged: np.ndarray) -> EvalResult:
    scores = np.where(flagged, 0.9, 0.1)
    return EvalResult(metrics=classification_metrics(labels, scores, 0.5), labels=labels,
                      scores=scores, threshold=0.5)


def test_first_run_promotes_a_challenger_at_or_above_the_baseline() -> None:
    labels = np.array([1] * 40 + [0] * 160)
    ours = _scored(labels, np.arange(200) < 36)        # 36 of 40 found, no false alarm
    baseline = _scored(labels, np.arange(200) < 30)    # 30 of 40
    decision = decide(ours, None, BASELINE_POLICY, baseline)
    assert decision.promote and _failed(decision) == []
    assert "at or above the baseline" in _check(decision, "baseline").detail
    tie = decide(baseline, None, BASELINE_POLICY, baseline)
    assert tie.promote


def test_first_run_below_a_clearly_better_baseline_is_rejected_with_what_to_do() -> None:
    labels = np.array([1] * 40 + [0] * 160)
    ours = _scored(labels, np.arange(200) < 20)
    baseline = _scored(labels, np.arange(200) < 40)
    decision = decide(ours, None, BASELINE_POLICY, baseline)
    assert not decision.promote and _failed(decision) == ["baseline", "first_run"]
    assert "below the baseline" in decision.reason
    assert decision.baseline_bootstrap["ci_high"] < 0
    assert "better beyond noise" in decision.reason
    assert "label more anomalies" in decision.reason
    assert "ANOMDET_PROMOTION__FIRST_RUN=always" in decision.reason
    assert decision.uncertainty is None  # 40 test anomalies: no caveat needed


def test_with_few_anomalies_a_lead_within_noise_does_not_block_the_first_champion() -> None:
    labels = np.array([1] * 4 + [0] * 96)
    ours = _scored(labels, np.arange(100) < 3)      # f1 0.857
    baseline = _scored(labels, np.arange(100) < 4)  # f1 1.0
    decision = decide(ours, None, BASELINE_POLICY, baseline)
    assert decision.promote
    detail = _check(decision, "baseline").detail
    assert "finds 3 of the 4 test anomalies, the baseline 4" in detail
    assert "not better beyond noise" in detail
    # The decision carries the challenger's own interval and says the figure is rough.
    assert decision.uncertainty["anomalies"] == 4
    assert decision.uncertainty["ci_low"] < decision.uncertainty["value"] <= 1.0
    assert "only 4 anomalies" in decision.reason and "rough figure" in decision.reason


@pytest.mark.parametrize("behind", [1, 2])
def test_a_first_challenger_a_few_anomalies_behind_is_promoted_at_any_test_size(
        behind: int) -> None:
    # 48 test anomalies, as a demo split holds: the baseline's lead of one or two of them
    # is within the split's noise, so the first champion is not left to the training seed.
    labels = np.array([1] * 48 + [0] * 429)
    ours = _scored(labels, np.arange(477) < 48 - behind)
    baseline = _scored(labels, np.arange(477) < 48)
    decision = decide(ours, None, BASELINE_POLICY, baseline)
    assert decision.promote and _failed(decision) == []
    detail = _check(decision, "baseline").detail
    assert f"finds {48 - behind} of the 48 test anomalies, the baseline 48" in detail
    paired = decision.baseline_bootstrap
    assert paired["ci_low"] < 0 <= paired["ci_high"] + 1e-12
    assert f"[{paired['ci_low']:+.4f}, {paired['ci_high']:+.4f}]" in detail
    assert "trails the baseline" in decision.reason


def test_the_baseline_interval_is_reported_when_the_challenger_leads_too() -> None:
    labels = np.array([1] * 40 + [0] * 160)
    decision = decide(_scored(labels, np.arange(200) < 38), None, BASELINE_POLICY,
                      _scored(labels, np.arange(200) < 30))
    assert decision.promote and decision.baseline_bootstrap["ci_high"] > 0
    assert "interval of the difference" in _check(decision, "baseline").detail
    assert "trails" not in decision.reason


def test_without_a_baseline_the_baseline_policy_cannot_promote() -> None:
    decision = _decide(GOOD, None, dataclasses.replace(NO_BOOTSTRAP, first_run="beat_baseline"))
    assert not decision.promote
    assert "no baseline was measured" in _check(decision, "baseline").detail


def test_must_beat_baseline_binds_later_runs_only_when_opted_in() -> None:
    labels = np.array([1] * 40 + [0] * 160)
    champion = _scored(labels, np.arange(200) < 20)
    ours = _scored(labels, np.arange(200) < 34)
    baseline = _scored(labels, np.arange(200) < 38)
    plain = decide(ours, champion, BASELINE_POLICY, baseline)
    assert plain.promote and "baseline" not in [c.name for c in plain.checks]
    strict = decide(ours, champion, dataclasses.replace(BASELINE_POLICY, must_beat_baseline=True),
                    baseline)
    assert not strict.promote and _failed(strict) == ["baseline"]
