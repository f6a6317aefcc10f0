"""Drift figures: computed every run, bounds crossed only by real shifts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anomdet.drift import DataProfile, compare, oov_rate, profile
from tests.configs import drift_bounds

VOCAB = frozenset({"user", "signed", "in", "from", "office", "payment", "settled"})


def _frame(texts: list[str], rate: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"text": texts, "label": (rng.random(len(texts)) < rate).astype(int)})


def test_same_data_shows_no_drift() -> None:
    texts = [f"user {i} signed in from office" for i in range(500)]
    ref = profile(_frame(texts, 0.1), VOCAB)
    report = compare(ref, profile(_frame(texts, 0.1), VOCAB), drift_bounds(on_breach="fail"))
    assert report.figures["length_ks_statistic"] == 0.0
    assert report.figures["unseen_share"] == 0.0
    assert report.breaches == () and not report.blocks


def test_shifted_data_crosses_bounds_and_fail_mode_blocks() -> None:
    ref = profile(_frame([f"user {i} signed in from office" for i in range(500)], 0.05), VOCAB)
    long_foreign = [f"zzkx qqwv payment {i} " + "blorf " * 30 for i in range(500)]
    current = profile(_frame(long_foreign, 0.4, seed=1), VOCAB)
    report = compare(ref, current, drift_bounds(on_breach="fail"))
    assert report.figures["length_ks_statistic"] > 0.9
    assert report.figures["oov_rate_change"] > 0.5
    assert report.figures["unseen_share"] == 1.0
    names = " ".join(report.breaches)
    assert "text length" in names and "out-of-vocabulary" in names and "label rate" in names
    assert report.blocks
    assert not compare(ref, current, drift_bounds(on_breach="warn")).blocks


def test_first_run_has_figures_but_no_reference() -> None:
    current = profile(_frame(["user signed in"] * 10, 0.2), VOCAB)
    report = compare(None, current, drift_bounds())
    assert report.figures["reference"] is None and report.figures["rows"] == 10
    assert report.summary()["breaches"] == []


def test_profile_round_trips_through_json_dict() -> None:
    prof = profile(_frame(["user signed in", "payment settled xyz"], 0.5), VOCAB)
    assert DataProfile.from_dict(prof.to_dict()) == prof


def test_oov_rate_counts_words_missing_from_the_vocabulary() -> None:
    assert oov_rate(pd.Series(["user signed in", "qqq office"]), VOCAB) == pytest.approx(1 / 5)
    assert oov_rate(pd.Series(["1234 !!"]), VOCAB) == 0.0


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="on_breach"):
        drift_bounds(on_breach="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length_ks"):
        drift_bounds(max_length_ks=2)
