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

# C=10: tf-idf rows are L2-normalised and very sparse, so the default C=1 regularises
# too hard for short messages; balanced weights give the rare class its due.
REGULARISATION_C = 10.0


def baseline_scores(split: Split, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation and test scores of TF-IDF (word 1-2 + char 3-5 grams) + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True),
    )
    classifier = LogisticRegression(C=REGULARISATION_C, class_weight="balanced", max_iter=2000,
                                    random_state=seed)
    model = make_pipeline(features, classifier)
    model.fit(split.train["text"].tolist(), split.train["label"].to_numpy())
    return (model.predict_proba(split.val["text"].tolist())[:, 1],
            model.predict_proba(split.test["text"].tolist())[:, 1])


def evaluate_baseline(split: Split, *, seed: int,
                      target_precision: float | None = None) -> EvalResult:
    """The baseline on the test split, at the threshold it earned on validation."""
    val_scores, test_scores = baseline_scores(split, seed=seed)
    threshold = choose_threshold(split.val["label"].to_numpy(), val_scores,
                                 target_precision=target_precision)
    labels = split.test["label"].to_numpy(dtype=np.int64)
    return EvalResult(metrics=classification_metrics(labels, test_scores, threshold),
                      labels=labels, scores=test_scores, threshold=threshold)
