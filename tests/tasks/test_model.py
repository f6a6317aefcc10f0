"""tasks.model: each task hands the right settings to its one anomdet call."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from prefect.cache_policies import NO_CACHE

import anomdet.checkpoint as checkpoint
import anomdet.training as training
import tasks.model as tm
from anomdet.data import Split
from anomdet.scoring import Scorer
from anomdet.settings import Settings
from db.engine import get_engine, migrate, session_scope
from tests.tasks.conftest import Recorder
from tests.versions import promote

TASKS = {
    tm.validate_records: "validate records",
    tm.measure_drift: "measure drift",
    tm.split_data: "split records",
    tm.load_champion: "load champion",
    tm.fine_tune_challenger: "fine-tune challenger",
    tm.fit_baseline: "fit TF-IDF baseline",
    tm.evaluate_model: "evaluate on test split",
    tm.discard_challenger: "discard kept challenger",
}

SETTINGS = Settings(training={"seed": 99, "split_seed": 7, "val_fraction": 0.1,
                              "test_fraction": 0.3, "target_precision": 0.9,
                              "max_length": 40},
                    score_batch_size=5)
FRAME = pd.DataFrame({"id": [1, 2, 3], "text": ["a", "b", "c"], "label": [0, 1, 0]})
SPLIT = Split(FRAME, FRAME, FRAME)


@pytest.mark.parametrize("task", TASKS, ids=TASKS.values())
def test_names_no_cache_and_no_retries(task: object) -> None:
    # Training and evaluation are not I/O: a failure would fail again the same way.
    assert task.name == TASKS[task]
    assert task.cache_policy is NO_CACHE
    assert task.retries == 0


def test_split_uses_the_split_seed_not_the_training_seed(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    split = Recorder(SPLIT)
    monkeypatch.setattr(tm, "split_records", split)
    assert tm.split_data.fn(FRAME, SETTINGS) is SPLIT
    assert split.call == ((FRAME,), {"val_fraction": 0.1, "test_fraction": 0.3, "seed": 7})


def test_validation_runs_the_configured_suite(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    report = SimpleNamespace(success=True)
    validate = Recorder(report)
    monkeypatch.setattr(tm, "validate_labelled", validate)
    assert tm.validate_records.fn(FRAME, SETTINGS, data_docs_dir=tmp_path) is report
    (frame, config), kwargs = validate.call
    assert frame is FRAME and kwargs == {"data_docs_dir": tmp_path}
    assert config == SETTINGS.validation.config()


def test_fine_tuning_gets_the_training_settings_and_a_progress_bar(
        monkeypatch: pytest.MonkeyPatch, no_progress: Recorder, tmp_path: Path) -> None:
    challenger = SimpleNamespace(checkpoint=None)
    train, keep = Recorder(challenger), Recorder()
    monkeypatch.setattr(checkpoint, "train_challenger", train)
    monkeypatch.setattr(checkpoint, "save_checkpoint", keep)
    settings = SETTINGS.model_copy(update={"artifacts_dir": tmp_path})
    assert tm.fine_tune_challenger.fn(SPLIT, settings) is challenger
    (split, training), kwargs = train.call
    assert split is SPLIT and training is settings.training
    assert kwargs["progress"] is no_progress.result
    # Kept for a retry under the model's folder, named by the data and the settings.
    key = checkpoint.challenger_key(SPLIT, settings.training)
    assert keep.call == ((challenger, tmp_path / "anomdet" / "checkpoints" / key), {})
    assert challenger.checkpoint == tmp_path / "anomdet" / "checkpoints" / key


def test_baseline_uses_the_training_seed_and_target_precision(
        monkeypatch: pytest.MonkeyPatch) -> None:
    baseline = Recorder("result")
    monkeypatch.setattr(tm, "evaluate_baseline", baseline)
    assert tm.fit_baseline.fn(SPLIT, SETTINGS) == "result"
    assert baseline.call == ((SPLIT,), {"seed": 99, "target_precision": 0.9})


def test_evaluation_scores_at_the_models_own_threshold(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    evaluate = Recorder("result")
    monkeypatch.setattr(training, "evaluate", evaluate)
    scorer = Scorer("model", "tokenizer", 0.7, 33, 5, "lexical")
    assert tm.evaluate_model.fn(scorer, FRAME) == "result"
    assert evaluate.call == (("model", "tokenizer", FRAME, 0.7),
                             {"max_length": 33, "batch_size": 5, "lexical": "lexical"})


def test_drift_without_a_champion_compares_against_the_base_vocabulary(
        monkeypatch: pytest.MonkeyPatch) -> None:
    vocab, current = frozenset({"a"}), "profile"
    monkeypatch.setattr(training, "base_vocab", Recorder(vocab))
    make_profile, compare = Recorder(current), Recorder("report")
    monkeypatch.setattr(tm, "profile", make_profile)
    monkeypatch.setattr(tm, "compare", compare)
    assert tm.measure_drift.fn(FRAME, None, SETTINGS) == ("report", current)
    assert make_profile.call == ((FRAME, vocab), {"seed": 99})
    assert compare.call == ((None, current, SETTINGS.drift.bounds()), {})


def test_load_champion_verifies_the_recorded_artifact(sqlite_url: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(database_url=sqlite_url)
    migrate(get_engine(sqlite_url))
    load = Recorder("loaded")
    monkeypatch.setattr(tm, "load_artifact", load)
    assert tm.load_champion.fn(settings) is None  # first run: nothing to load
    assert load.calls == []
    with session_scope(get_engine(sqlite_url)) as session:
        promote(
            session, expected_champion_id=None, model_name=settings.model_name,
            base_model="tiny-random", artifact_uri="/models/v1",
            weights_sha256="ab" * 32, data_fingerprint="f" * 64,
            hyperparameters={"max_length": 48, "inference_precision": "fp32"},
            metrics={"f1": 0.5}, threshold=0.625)
    champion, loaded = tm.load_champion.fn(settings)
    assert champion.version == 1 and loaded == "loaded"
    (path,), kwargs = load.call
    assert path == Path("/models/v1") and kwargs["expected_sha256"] == "ab" * 32
    assert kwargs["recorded"] == tm.recorded_scoring(0.625, champion.hyperparameters)
    assert kwargs["recorded"]["threshold"] == pytest.approx(0.625)


def test_fine_tune_task_trains_the_tiny_model_end_to_end(no_progress: Recorder,
                                                         tmp_path: Path) -> None:
    """The one real call: the tiny random BERT through the task, threshold in (0, 1]."""
    rng = np.random.default_rng(0)
    labels = (rng.random(120) < 0.3).astype(int)
    frame = pd.DataFrame({"id": range(120), "label": labels,
                          "text": [f"{'odd burst' if y else 'fine'} event {i}"
                                   for i, y in enumerate(labels)]})
    split = Split(frame.iloc[:80], frame.iloc[80:], frame.iloc[80:])
    settings = Settings(training={"base_model": "tiny-random", "epochs": 1, "min_steps": 5,
                                  "max_steps": 5, "max_length": 16, "probe_head": False,
                                  "inference_precision": "fp32"}, artifacts_dir=tmp_path)
    challenger = tm.fine_tune_challenger.fn(split, settings)
    assert 0 < challenger.threshold <= 1
    assert challenger.result.steps == 5 and challenger.precision == "fp32"
    assert challenger.checkpoint.is_dir()
