"""Demo records are deterministic, realistic in mix, learnable, and not one keyword away."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import FeatureUnion

from anomdet.demo import demo_records_csv, generate_demo_records


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return generate_demo_records(3000, seed=7)


def test_deterministic_under_seed(records: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(records, generate_demo_records(3000, seed=7))
    assert generate_demo_records(3000, seed=8)["text"].tolist() != records["text"].tolist()


def test_shape_rates_and_labelling(records: pd.DataFrame) -> None:
    assert records["id"].tolist() == list(range(1, 3001))
    assert str(records["label"].dtype) == "Int64"
    labelled = records["label"].notna()
    assert 0.55 < labelled.mean() < 0.65
    assert records.loc[labelled, "label"].sum() >= 30
    assert records["created_at"].is_monotonic_increasing
    assert str(records["created_at"].dt.tz) == "UTC"


def test_anomaly_share_matches_the_rate() -> None:
    frame = generate_demo_records(3000, anomaly_rate=0.05, labelled_fraction=1.0, seed=1)
    assert abs(frame["label"].mean() - 0.05) <= 0.015


def test_no_single_word_gives_anomalies_away() -> None:
    frame = generate_demo_records(3000, labelled_fraction=1.0, seed=2)
    labels = frame["label"].to_numpy(dtype=int)
    tokens = [set(re.findall(r"[a-z0-9]+", t.lower())) for t in frame["text"]]
    counts = Counter(tok for toks in tokens for tok in toks)
    for token in (t for t, c in counts.items() if c >= 10):
        has = np.array([token in toks for toks in tokens])
        precision = labels[has].mean()
        recall = has[labels == 1].mean()
        assert not (precision >= 0.9 and recall >= 0.5), token


def test_anomalies_are_learnable_from_text() -> None:
    frame = generate_demo_records(3000, labelled_fraction=1.0, seed=3)
    train, test = train_test_split(frame, test_size=0.3, random_state=0,
                                   stratify=frame["label"].astype(int))
    features = FeatureUnion([
        ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)),
    ])
    model = LogisticRegression(class_weight="balanced", max_iter=2000, C=10)
    model.fit(features.fit_transform(train["text"]), train["label"].astype(int))
    scores = model.predict_proba(features.transform(test["text"]))[:, 1]
    truth = test["label"].astype(int)
    # Learnable, but not trivially: a bag of n-grams misses the numeric-range families.
    assert average_precision_score(truth, scores) >= 0.6
    assert f1_score(truth, scores >= 0.5) >= 0.5


def test_texts_are_short_log_lines(records: pd.DataFrame) -> None:
    assert records["text"].str.len().max() < 200
    assert records["text"].str.split().str[0].nunique() >= 6


def test_arguments_are_checked() -> None:
    for kwargs in ({"n": 10}, {"anomaly_rate": 0.7}, {"labelled_fraction": 0}):
        with pytest.raises(ValueError):
            generate_demo_records(**kwargs)


def test_csv_round_trip(tmp_path: Path) -> None:
    path = demo_records_csv(tmp_path / "demo.csv", n=200)
    back = pd.read_csv(path)
    assert list(back.columns) == ["id", "text", "label"] and len(back) == 200
    assert back["label"].isna().any()
