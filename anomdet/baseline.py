"""The reference every run is measured against: TF-IDF + logistic regression.

Fitted on the same train split as the challenger, thresholded on the same validation
split and evaluated on the same test split, so users see on their own data what the
fine-tuned BERT adds over a bag of n-grams.
"""

from __future__ import annotations

import numpy as np

from anomdet.data import Split
from anomdet.metrics import choose_threshold, classification_metrics
from anomdet.promotion import EvalResult


def baseline_scores(split: Split, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation and test scores of TF-IDF (word 1-2 + char 3-5 grams) + logistic regression
    fitted on the train split alone (`anomdet.lexical`)."""
    from anomdet.lexical import LexicalModel

    model = LexicalModel.fit(split.train["text"].tolist(), split.train["label"].to_numpy(),
                             seed=seed)
    return (model.probabilities(split.val["text"].tolist()),
            model.probabilities(split.test["text"].tolist()))


def evaluate_baseline(split: Split, *, seed: int,
                      target_precision: float | None = None) -> EvalResult:
    """The baseline on the test split, at the threshold it earned on validation."""
    val_scores, test_scores = baseline_scores(split, seed=seed)
    threshold = choose_threshold(split.val["label"].to_numpy(), val_scores,
                                 target_precision=target_precision)
    labels = split.test["label"].to_numpy(dtype=np.int64)
    return EvalResult(metrics=classification_metrics(labels, test_scores, threshold),
                      labels=labels, scores=test_scores, threshold=threshold)
