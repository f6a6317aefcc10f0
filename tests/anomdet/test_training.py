"""anomdet.training on the tiny random BERT: a challenger comes back with a threshold
chosen on validation, in the precision it will score with."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anomdet.data import split_records
from anomdet.settings import TrainingSettings
from anomdet.training import (
    Challenger,
    _cap_rows,
    choose_precision,
    evaluate,
    train_challenger,
    train_config,
)


def _frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.25).astype(int)
    normal = ["login ok for user {}", "backup {} finished", "report {} sent"]
    odd = ["disk {} failure detected", "root login from unknown host {}"]
    texts = [(odd if y else normal)[i % (2 if y else 3)].format(i) for i, y in
             enumerate(labels)]
    return pd.DataFrame({"id": range(n), "text": texts, "label": labels})


@pytest.fixture(scope="module")
def challenger() -> tuple[Challenger, pd.DataFrame]:
    split = split_records(_frame(), val_fraction=0.2, test_fraction=0.2, seed=1)
    settings = TrainingSettings(base_model="tiny-random", epochs=1, min_steps=30, max_steps=30,
                                learning_rate=1e-3, max_length=24, batch_size=16, seed=3,
                                inference_precision="auto")
    return train_challenger(split, settings), split


def test_threshold_lies_in_the_unit_interval_and_comes_from_validation(
        challenger: tuple[Challenger, object]) -> None:
    model, split = challenger
    assert 0 < model.threshold < 1
    assert model.val_scores.shape == (len(split.val),)
    assert ((model.val_scores >= 0) & (model.val_scores <= 1)).all()
    # Chosen on validation: some validation texts are flagged, not all of them.
    flagged = model.val_scores >= model.threshold
    assert flagged.any() and not flagged.all()


def test_auto_precision_is_decided_on_validation(challenger: tuple[Challenger, object]) -> None:
    model, _ = challenger
    assert model.precision in {"int8", "fp32"} and model.val_pr_auc_int8 is not None
    expected = choose_precision("auto", model.result.best_val_pr_auc, model.val_pr_auc_int8,
                                0.002)
    assert model.precision == expected
    assert (model.scoring_model is model.model) == (model.precision == "fp32")


def test_hyperparameters_describe_the_run(challenger: tuple[Challenger, object]) -> None:
    model, split = challenger
    hyper = model.hyperparameters()
    assert hyper["base_model"] == "tiny-random" and hyper["steps"] == 30
    assert hyper["inference_precision"] == model.precision
    assert hyper["max_length"] == 24 and hyper["train_rows"] <= len(split.train)


def test_evaluate_scores_the_test_split_at_the_given_threshold(
        challenger: tuple[Challenger, object]) -> None:
    model, split = challenger
    result = evaluate(model.scoring_model, model.tokenizer, split.test, model.threshold,
                      max_length=24, batch_size=7)
    assert result.scores.shape == (len(split.test),) and result.threshold == model.threshold
    assert result.metrics["recall"] == pytest.approx(
        ((result.scores >= model.threshold) & (result.labels == 1)).sum()
        / (result.labels == 1).sum())


@pytest.mark.parametrize(("setting", "fp32", "int8", "chosen"), [
    ("fp32", 0.5, 0.9, "fp32"), ("int8", 0.9, 0.1, "int8"),
    ("auto", 0.90, 0.899, "int8"), ("auto", 0.90, 0.897, "fp32"), ("auto", 0.5, 0.6, "int8"),
])
def test_choose_precision(setting: str, fp32: float, int8: float, chosen: str) -> None:
    assert choose_precision(setting, fp32, int8, tolerance=0.002) == chosen


def test_choose_precision_refuses_an_unknown_setting() -> None:
    with pytest.raises(ValueError, match="fp16"):
        choose_precision("fp16", 0.5, 0.5, 0.002)


def test_train_config_carries_every_training_setting() -> None:
    settings = TrainingSettings(epochs=5, learning_rate=3e-4, max_length=64, seed=11,
                                min_steps=7, max_steps=70, anomaly_share=0.3, probe_head=False)
    config = train_config(settings)
    for name, value in vars(config).items():
        assert getattr(settings, name) == value, name


def test_capping_rows_keeps_the_anomalies_first() -> None:
    frame = _frame(400)
    capped = _cap_rows(frame, 100, seed=0)
    anomalies = int(frame["label"].sum())
    assert len(capped) == 100 and capped["label"].sum() == min(anomalies, 50)
    assert capped["id"].is_monotonic_increasing
    assert _cap_rows(frame, None, seed=0) is frame
