"""Lexical evidence: word and character n-grams weighed by a logistic regression.

The fine-tuned encoder reads meaning; a bag of n-grams reads vocabulary, and where the
anomalies carry their own words (spam's "txt", "prize", a log family's error codes) it
ranks them as well or better. A model keeps both: its score combines the encoder's
log-odds with this model's (see `anomdet.combine`). The same recipe is the baseline every
run reports (`anomdet.baseline`), fitted on the same train split.

Saved beside the encoder's weights as `lexical.safetensors` (idf weights and coefficients)
and `lexical.json` (the vocabularies and the vectorisers' settings), never pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

WEIGHTS_FILE = "lexical.safetensors"
VOCABULARY_FILE = "lexical.json"

# Words 1-2 and characters 3-5 within word boundaries; sublinear term frequencies so a
# repeated word counts less than a new one.
VECTORISERS: dict[str, dict[str, Any]] = {
    "word": {"analyzer": "word", "ngram_range": (1, 2), "sublinear_tf": True},
    "char": {"analyzer": "char_wb", "ngram_range": (3, 5), "sublinear_tf": True},
}
# C=10: tf-idf rows are L2-normalised and very sparse, so the default C=1 regularises
# too hard for short messages; balanced weights give the rare class its due.
REGULARISATION_C = 10.0


def _vectoriser(name: str, vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(vocabulary=vocabulary, **VECTORISERS[name])


@dataclass
class LexicalModel:
    """Fitted vectorisers and the regression's weights over their joined features."""

    vectorisers: dict[str, TfidfVectorizer]
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, texts: list[str], labels: np.ndarray, *, seed: int) -> LexicalModel:
        from scipy.sparse import hstack
        from sklearn.linear_model import LogisticRegression

        vectorisers = {name: _vectoriser(name) for name in VECTORISERS}
        features = hstack([v.fit_transform(texts) for v in vectorisers.values()]).tocsr()
        regression = LogisticRegression(C=REGULARISATION_C, class_weight="balanced",
                                        max_iter=2000, random_state=seed)
        regression.fit(features, np.asarray(labels, dtype=np.int64))
        return cls(vectorisers, regression.coef_[0].astype(np.float64),
                   float(regression.intercept_[0]))

    def log_odds(self, texts: list[str]) -> np.ndarray:
        """The regression's log-odds that each text is an anomaly."""
        from scipy.sparse import hstack

        if not texts:
            return np.zeros(0, dtype=np.float64)
        features = hstack([v.transform(texts) for v in self.vectorisers.values()]).tocsr()
        return np.asarray(features @ self.coef, dtype=np.float64) + self.intercept

    def probabilities(self, texts: list[str]) -> np.ndarray:
        from scipy.special import expit

        return expit(self.log_odds(texts))

    def save(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        tensors = {f"{name}.idf": np.ascontiguousarray(v.idf_, dtype=np.float64)
                   for name, v in self.vectorisers.items()}
        tensors["coef"] = np.ascontiguousarray(self.coef, dtype=np.float64)
        tensors["intercept"] = np.array([self.intercept], dtype=np.float64)
        save_file(tensors, str(Path(directory) / WEIGHTS_FILE))
        vocabularies = {name: {term: int(i) for term, i in v.vocabulary_.items()}
                        for name, v in self.vectorisers.items()}
        (Path(directory) / VOCABULARY_FILE).write_text(
            json.dumps({"vectorisers": {k: {**s, "ngram_range": list(s["ngram_range"])}
                                        for k, s in VECTORISERS.items()},
                        "vocabularies": vocabularies}))

    @classmethod
    def load(cls, directory: Path, saved: dict[str, Any] | None = None) -> LexicalModel:
        """The model saved in `directory` (`saved`: its `lexical.json`, where the caller
        has read it already); ValueError when its files disagree."""
        from safetensors.numpy import load_file

        directory = Path(directory)
        if saved is None:
            saved = json.loads((directory / VOCABULARY_FILE).read_text())
        tensors = load_file(str(directory / WEIGHTS_FILE))
        if set(saved["vectorisers"]) != set(VECTORISERS):
            raise ValueError(f"{directory / VOCABULARY_FILE}: vectorisers "
                             f"{sorted(saved['vectorisers'])}, expected {sorted(VECTORISERS)}")
        vectorisers = {}
        for name in VECTORISERS:
            vectoriser = _vectoriser(name, saved["vocabularies"][name])
            vectoriser.idf_ = tensors[f"{name}.idf"]
            vectorisers[name] = vectoriser
        coef = tensors["coef"]
        width = sum(len(v.vocabulary) for v in vectorisers.values())
        if coef.shape != (width,):
            raise ValueError(f"{directory / WEIGHTS_FILE}: {coef.shape[0]} coefficients for "
                             f"{width} n-grams")
        return cls(vectorisers, coef, float(tensors["intercept"][0]))


# Probabilities are clipped this far from 0 and 1 before taking log-odds.
_CLIP = 1e-15


def log_odds(probabilities: np.ndarray) -> np.ndarray:
    from scipy.special import logit

    return logit(np.clip(np.asarray(probabilities, dtype=np.float64), _CLIP, 1.0 - _CLIP))


@dataclass(frozen=True)
class Blend:
    """How a model's score combines the encoder's log-odds with the n-gram model's.

    Each log-odds is divided by its standard deviation on the validation split, and the
    two are added with equal weight: neither model's confidence scale (a fine-tuned
    encoder's log-odds spread several times wider than a regression's) decides how much it
    counts. Weights fitted on validation did worse on new data than equal ones (see
    docs/recipe.md): a few hundred validation texts cannot tell two good rankers apart,
    and the encoder's validation scores come from the check chosen on them. A Platt
    scaling fitted on validation then makes the sum a probability again, so a score of
    0.9 still means what users read it to mean; it does not change the ranking.
    """

    encoder_weight: float
    lexical_weight: float
    slope: float = 1.0
    intercept: float = 0.0

    def scores(self, encoder_probabilities: np.ndarray,
               lexical_log_odds: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        combined = (self.encoder_weight * log_odds(encoder_probabilities)
                    + self.lexical_weight * np.asarray(lexical_log_odds, dtype=np.float64))
        return expit(self.slope * combined + self.intercept)

    @classmethod
    def fit(cls, labels: np.ndarray, encoder_probabilities: np.ndarray,
            lexical_log_odds: np.ndarray) -> Blend:
        """Scales and calibration from validation labels and both models' scores."""
        from anomdet.metrics import platt_scaling

        def weight(values: np.ndarray) -> float:
            spread = float(np.std(values))
            # A model whose validation scores do not vary ranks nothing: it gets no say.
            return 1.0 / spread if spread > 1e-9 else 0.0

        encoder = log_odds(encoder_probabilities)
        lexical = np.asarray(lexical_log_odds, dtype=np.float64)
        blend = cls(weight(encoder), weight(lexical))
        combined = blend.encoder_weight * encoder + blend.lexical_weight * lexical
        y = np.asarray(labels, dtype=np.int64)
        if len(np.unique(y)) < 2 or float(np.std(combined)) <= 1e-9:
            return blend
        fitted = platt_scaling(y, combined, regularisation_c=1e4)
        return blend if fitted is None else cls(blend.encoder_weight, blend.lexical_weight,
                                                *fitted)

    def as_dict(self) -> dict[str, float]:
        return {"encoder_weight": self.encoder_weight, "lexical_weight": self.lexical_weight,
                "slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Blend:
        return cls(**{k: float(values[k]) for k in
                      ("encoder_weight", "lexical_weight", "slope", "intercept")})


BLEND_KEY = "blend"


@dataclass(frozen=True)
class LexicalEvidence:
    """The n-gram model a saved model carries, and how its evidence joins the encoder's."""

    model: LexicalModel
    blend: Blend

    def combine(self, texts: list[str], encoder_probabilities: np.ndarray) -> np.ndarray:
        """The model's scores: the encoder's probabilities blended with the n-grams'."""
        return self.blend.scores(encoder_probabilities, self.model.log_odds(list(texts)))

    def save(self, directory: Path) -> None:
        self.model.save(directory)
        path = Path(directory) / VOCABULARY_FILE
        saved = json.loads(path.read_text())
        path.write_text(json.dumps({**saved, BLEND_KEY: self.blend.as_dict()}))

    @classmethod
    def load(cls, directory: Path) -> LexicalEvidence | None:
        """The evidence saved in `directory`; None for a model that scores with its
        encoder alone (trained with `lexical_evidence` off)."""
        if not (Path(directory) / WEIGHTS_FILE).is_file():
            return None
        saved = json.loads((Path(directory) / VOCABULARY_FILE).read_text())
        return cls(LexicalModel.load(directory, saved), Blend.from_dict(saved[BLEND_KEY]))
