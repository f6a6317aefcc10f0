"""Drift figures between a batch of records and the champion's training data.

Computed on every run and stored in `anomdet_runs.drift`, whether or not a bound
is crossed, so the history shows how the data moves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from anomdet.artifact import META_FILE
from anomdet.data import normalise_text

logger = logging.getLogger(__name__)

# Enough for a stable length distribution and unseen-share estimate, small enough
# to travel inside the artifact's metadata.
MAX_PROFILE_ROWS = 50_000
_WORD = re.compile(r"[a-z]+")


def _text_hash(text: str) -> str:
    return hashlib.blake2b(normalise_text(text).encode(), digest_size=8).hexdigest()


def oov_rate(texts: pd.Series, vocab: set[str] | frozenset[str]) -> float:
    """Share of alphabetic words that are not whole entries of the tokenizer's vocabulary.

    WordPiece rarely emits [UNK]; words it must split into pieces are the real sign
    that text moved away from what the model's vocabulary knows.
    """
    words = [w for t in texts for w in _WORD.findall(str(t).lower())]
    if not words:
        return 0.0
    return float(np.mean([w not in vocab for w in words]))


def artifact_vocab(directory: Path) -> frozenset[str]:
    """The vocabulary of a saved model's tokenizer, read from its files, without loading
    the tokenizer (which would import transformers): tokenizer.json's WordPiece vocabulary,
    or vocab.txt."""
    tokenizer_file = directory / "tokenizer.json"
    if tokenizer_file.is_file():
        vocab = (json.loads(tokenizer_file.read_text()).get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            return frozenset(vocab)
    vocab_file = directory / "vocab.txt"
    if vocab_file.is_file():
        return frozenset(vocab_file.read_text(encoding="utf-8").splitlines())
    raise ValueError(f"{directory} holds no tokenizer.json with a WordPiece vocabulary and "
                     "no vocab.txt")


@dataclass(frozen=True)
class DataProfile:
    """What drift is measured against: a sample of the data a model was trained on."""

    rows: int
    label_rate: float
    oov_rate: float
    lengths: tuple[int, ...]
    text_hashes: frozenset[str] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "label_rate": self.label_rate, "oov_rate": self.oov_rate,
                "lengths": list(self.lengths), "text_hashes": sorted(self.text_hashes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataProfile:
        return cls(rows=int(data["rows"]), label_rate=float(data["label_rate"]),
                   oov_rate=float(data["oov_rate"]), lengths=tuple(data["lengths"]),
                   text_hashes=frozenset(data["text_hashes"]))


def profile(frame: pd.DataFrame, vocab: set[str] | frozenset[str], *, seed: int = 0) -> DataProfile:
    """Profile labelled records (columns text, label), sampling large frames."""
    sample = frame
    if len(frame) > MAX_PROFILE_ROWS:
        sample = frame.sample(MAX_PROFILE_ROWS, random_state=seed)
    texts = sample["text"].astype(str)
    labels = pd.to_numeric(sample["label"], errors="coerce")
    return DataProfile(
        rows=len(frame), label_rate=float(labels.mean()) if len(labels) else 0.0,
        oov_rate=oov_rate(texts, vocab), lengths=tuple(int(n) for n in texts.str.len()),
        text_hashes=frozenset(_text_hash(t) for t in texts),
    )


@dataclass(frozen=True)
class DriftBounds:
    """Limits on drift; crossing one fails the gate or only warns, as configured.

    Built by `anomdet.settings.DriftSettings.bounds()`, which holds the defaults.
    """

    # The KS statistic (largest gap between the two length CDFs) rather than its
    # p-value: with thousands of rows any tiny shift is "significant".
    max_length_ks: float
    max_oov_increase: float
    max_label_rate_change: float
    max_unseen_share: float
    on_breach: Literal["fail", "warn"]

    def __post_init__(self) -> None:
        if self.on_breach not in ("fail", "warn"):
            raise ValueError(f"on_breach must be 'fail' or 'warn', not {self.on_breach!r}")
        for name in ("max_length_ks", "max_oov_increase", "max_label_rate_change",
                     "max_unseen_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class DriftReport:
    """The drift figures of one run and the bounds they crossed."""

    figures: dict[str, Any]
    breaches: tuple[str, ...]
    on_breach: str

    @property
    def blocks(self) -> bool:
        """True when a bound was crossed and crossing one must fail the gate."""
        return bool(self.breaches) and self.on_breach == "fail"

    def summary(self) -> dict[str, Any]:
        return {**self.figures, "breaches": list(self.breaches), "on_breach": self.on_breach}


def unlabelled_drift(artifact: Path, texts: list[str], bounds: DriftBounds, *,
                     seed: int = 0) -> tuple[str, ...]:
    """The bounds that unlabelled `texts` cross against the training profile saved in a
    model's artifact (none when it saved none). Reads the artifact's files only: no
    model or tokenizer is loaded."""
    meta_file = artifact / META_FILE
    if not texts or not meta_file.is_file():
        return ()
    reference = json.loads(meta_file.read_text()).get("data_profile")
    if not reference:
        return ()
    frame = pd.DataFrame({"text": texts, "label": [float("nan")] * len(texts)})
    current = profile(frame, artifact_vocab(artifact), seed=seed)
    return compare(DataProfile.from_dict(reference), current, bounds).breaches


def compare(
    reference: DataProfile | None, current: DataProfile, bounds: DriftBounds
) -> DriftReport:
    """Drift figures of `current` against `reference` (None on the first run)."""
    figures: dict[str, Any] = {"rows": current.rows, "label_rate": current.label_rate,
                               "oov_rate": current.oov_rate, "reference": None}
    if reference is None:
        return DriftReport(figures=figures, breaches=(), on_breach=bounds.on_breach)
    # Imported here: the settings check the bounds at every command's start, and SciPy's
    # statistics take longer to import than the rest of that check.
    from scipy.stats import ks_2samp

    ks = ks_2samp(np.asarray(reference.lengths), np.asarray(current.lengths))
    unseen = float(np.mean([h not in reference.text_hashes for h in current.text_hashes]))
    figures.update(
        reference={"rows": reference.rows, "label_rate": reference.label_rate,
                   "oov_rate": reference.oov_rate},
        length_ks_statistic=float(ks.statistic), length_ks_pvalue=float(ks.pvalue),
        oov_rate_change=current.oov_rate - reference.oov_rate,
        label_rate_change=current.label_rate - reference.label_rate,
        unseen_share=unseen,
    )
    checks = [
        ("text length distribution", figures["length_ks_statistic"], bounds.max_length_ks),
        ("out-of-vocabulary rate increase", figures["oov_rate_change"], bounds.max_oov_increase),
        ("share of texts unseen before", unseen, bounds.max_unseen_share),
    ]
    if not math.isnan(current.label_rate):  # unlabelled records have no label rate
        checks.insert(2, ("label rate change", abs(figures["label_rate_change"]),
                          bounds.max_label_rate_change))
    breaches = tuple(f"{name}: {value:.4f} exceeds the bound {bound:.4f}"
                     for name, value, bound in checks if value > bound)
    for breach in breaches:
        logger.warning("drift: %s", breach)
    return DriftReport(figures=figures, breaches=breaches, on_breach=bounds.on_breach)
