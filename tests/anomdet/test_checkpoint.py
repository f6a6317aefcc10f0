"""anomdet.checkpoint: a trained challenger kept for a retry comes back as it was
trained, under a key that any change of rows or settings changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomdet.artifact import WEIGHTS_FILE
from anomdet.checkpoint import (
    challenger_key,
    checkpoint_dir,
    discard_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from anomdet.data import Split
from anomdet.inference import predict_scores
from anomdet.settings import TrainingSettings
from anomdet.training import train_challenger

TRAINING = TrainingSettings(base_model="tiny-random", epochs=1, min_steps=8, max_steps=8,
                            max_length=16, probe_head=False, inference_precision="int8",
                            int8_tolerance=1.0)


def _split(n: int = 120, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    frame = pd.DataFrame({"id": range(n), "label": labels,
                          "text": [f"{'odd burst' if y else 'fine'} event {i}"
                                   for i, y in enumerate(labels)]})
    return Split(frame.iloc[: n // 2], frame.iloc[n // 2:], frame.iloc[n // 2:])


@pytest.fixture(scope="module")
def trained() -> tuple[Split, object]:
    split = _split()
    return split, train_challenger(split, TRAINING)


def test_a_kept_challenger_comes_back_as_it_was_trained(trained: tuple, tmp_path: Path) -> None:
    split, challenger = trained
    directory = checkpoint_dir(tmp_path, challenger_key(split, TRAINING))
    save_checkpoint(challenger, directory)
    back = load_checkpoint(directory)
    assert back is not None and back.precision == challenger.precision == "int8"
    assert back.threshold == challenger.threshold and back.config == challenger.config
    assert back.result.history == challenger.result.history
    assert back.result.steps == challenger.result.steps == 8
    np.testing.assert_allclose(back.val_scores, challenger.val_scores)
    texts = split.test["text"].tolist()
    # The scoring model scores as the one that was thresholded and evaluated.
    np.testing.assert_allclose(
        predict_scores(back.scoring_model, back.tokenizer, texts, max_length=16),
        predict_scores(challenger.scoring_model, challenger.tokenizer, texts, max_length=16),
        atol=1e-6)


def test_the_key_follows_the_rows_and_every_training_setting(trained: tuple) -> None:
    split, _ = trained
    key = challenger_key(split, TRAINING)
    assert key == challenger_key(_split(), TRAINING)
    assert key != challenger_key(_split(seed=1), TRAINING)
    relabelled = split.val.assign(label=1 - split.val["label"])
    assert key != challenger_key(Split(split.train, relabelled, split.test), TRAINING)
    assert key != challenger_key(split, TRAINING.model_copy(update={"learning_rate": 1e-3}))
    # The test split is not the challenger's to see: it does not change it.
    assert key == challenger_key(Split(split.train, split.val, split.val.iloc[:3]), TRAINING)


def test_an_altered_checkpoint_is_dropped_and_older_ones_are_pruned(
        trained: tuple, tmp_path: Path) -> None:
    split, challenger = trained
    old = checkpoint_dir(tmp_path, "0" * 64)
    save_checkpoint(challenger, old)
    new = checkpoint_dir(tmp_path, challenger_key(split, TRAINING))
    save_checkpoint(challenger, new)
    assert not old.exists() and new.is_dir()
    weights = new / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    assert load_checkpoint(new) is None and not new.exists()
    assert load_checkpoint(new) is None
    discard_checkpoint(new)  # nothing left: no error


def test_a_disk_too_full_for_the_checkpoint_lets_the_run_go_on(
        trained: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # safetensors says "No space left on device" in an error of its own type.
    class SafetensorLikeError(Exception):
        pass

    def full(*_args: object, **_kwargs: object) -> None:
        raise SafetensorLikeError("Error while serializing: I/O error: No space left on "
                                  "device (os error 28)")

    split, challenger = trained
    directory = checkpoint_dir(tmp_path, challenger_key(split, TRAINING))
    monkeypatch.setattr("anomdet.checkpoint.save_artifact", full)
    save_checkpoint(challenger, directory)
    assert not directory.exists()
    assert "not kept for a retry" in caplog.text

    def broken(*_args: object, **_kwargs: object) -> None:
        raise SafetensorLikeError("some other failure")

    monkeypatch.setattr("anomdet.checkpoint.save_artifact", broken)
    with pytest.raises(SafetensorLikeError, match="some other failure"):
        save_checkpoint(challenger, directory)
