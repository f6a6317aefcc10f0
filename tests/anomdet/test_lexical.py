"""The n-gram model a saved model carries, and how its evidence blends with the encoder's."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from anomdet.data import Split
from anomdet.lexical import VOCABULARY_FILE, WEIGHTS_FILE, Blend, LexicalModel, log_odds

NORMAL = ["user {} logged in from the office", "backup of volume {} finished",
          "report {} sent to the team", "meeting {} moved to thursday"]
ODD = ["disk {} failure: sector unreadable", "kernel panic on node {}"]


def _texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.2).astype(np.int64)
    texts = [(ODD if y else NORMAL)[rng.integers(2 if y else 4)].format(rng.integers(1000))
             for y in labels]
    return texts, labels


def test_the_n_gram_model_ranks_anomalies_by_their_words():
    texts, labels = _texts(300, 1)
    model = LexicalModel.fit(texts, labels, seed=0)
    test_texts, test_labels = _texts(200, 2)
    assert roc_auc_score(test_labels, model.log_odds(test_texts)) > 0.99
    assert model.log_odds([]).shape == (0,)


def test_a_saved_n_gram_model_scores_as_the_fitted_one(tmp_path):
    texts, labels = _texts(200, 3)
    model = LexicalModel.fit(texts, labels, seed=0)
    model.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {WEIGHTS_FILE, VOCABULARY_FILE}
    again = LexicalModel.load(tmp_path)
    probe = texts[:50] + ["a text with words it never saw", ""]
    np.testing.assert_array_equal(again.log_odds(probe), model.log_odds(probe))


def test_a_saved_n_gram_model_whose_files_disagree_is_refused(tmp_path):
    texts, labels = _texts(200, 4)
    LexicalModel.fit(texts, labels, seed=0).save(tmp_path)
    saved = json.loads((tmp_path / VOCABULARY_FILE).read_text())
    saved["vocabularies"]["word"].popitem()
    (tmp_path / VOCABULARY_FILE).write_text(json.dumps(saved))
    with pytest.raises(ValueError):
        LexicalModel.load(tmp_path)


def test_the_baseline_is_the_n_gram_model_fitted_on_the_train_split():
    from anomdet.baseline import baseline_scores

    texts, labels = _texts(400, 5)
    frame = pd.DataFrame({"id": range(400), "text": texts, "label": labels})
    split = Split(frame.iloc[:250], frame.iloc[250:320], frame.iloc[320:])
    val, test = baseline_scores(split, seed=7)
    model = LexicalModel.fit(texts[:250], labels[:250], seed=7)
    np.testing.assert_allclose(test, model.probabilities(texts[320:]))
    np.testing.assert_allclose(val, model.probabilities(texts[250:320]))


def test_the_blend_weighs_each_model_by_the_spread_of_its_validation_log_odds():
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.3).astype(np.int64)
    encoder = expit(8.0 * (labels - 0.5) + rng.normal(0, 4, 400))
    lexical = 2.0 * (labels - 0.5) + rng.normal(0, 1, 400)
    blend = Blend.fit(labels, encoder, lexical)
    assert blend.encoder_weight == pytest.approx(1 / np.std(log_odds(encoder)))
    assert blend.lexical_weight == pytest.approx(1 / np.std(lexical))
    # Equal say after scaling: the blend ranks better than either model alone.
    blended = blend.scores(encoder, lexical)
    assert roc_auc_score(labels, blended) > max(roc_auc_score(labels, encoder),
                                                roc_auc_score(labels, lexical))
    # Calibrated on validation: the mean score is about the share of anomalies.
    assert blended.mean() == pytest.approx(labels.mean(), abs=0.03)
    assert Blend.from_dict(blend.as_dict()) == blend


def test_a_model_whose_validation_scores_do_not_vary_gets_no_say():
    labels = np.array([0, 1] * 50)
    lexical = np.where(labels == 1, 2.0, -2.0)
    blend = Blend.fit(labels, np.full(100, 0.3), lexical)
    assert blend.encoder_weight == 0.0
    scores = blend.scores(np.full(100, 0.9), lexical)
    assert roc_auc_score(labels, scores) == 1.0
