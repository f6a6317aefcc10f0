"""Data preparation: honest, deterministic splits and training-data fingerprints."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """Train, validation and test frames (columns id, text, label; labels int 0/1)."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def normalise_text(text: str) -> str:
    """The form under which two texts count as duplicates: case and spacing folded."""
    return " ".join(str(text).split()).lower()


def _stable_rank(keys: pd.Series, seed: int) -> np.ndarray:
    # A hash of (seed, text) rather than a random permutation: a text keeps its
    # place in the order however many other rows arrive, so splits stay stable
    # across runs and the champion is not tested on what it was trained on.
    digests = [hashlib.blake2b(f"{seed}\x00{k}".encode(), digest_size=8).digest() for k in keys]
    return np.array([int.from_bytes(d, "big") for d in digests], dtype=np.uint64)


def split_records(
    frame: pd.DataFrame, *, val_fraction: float, test_fraction: float, seed: int
) -> Split:
    """Split labelled records into train/validation/test, stratified by label.

    Rows whose normalised texts are equal form one group and land on one side, so
    duplicates never inflate test scores. The group's label is its majority label.
    """
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in (0, 1) with a sum below 1")
    data = frame.assign(label=frame["label"].astype(int))
    keys = data["text"].map(normalise_text)
    groups = pd.DataFrame({"key": keys, "label": data["label"]}).groupby("key")["label"]
    group_label = (groups.mean() >= 0.5).astype(int)
    side = pd.Series("train", index=group_label.index)
    for label in (0, 1):
        members = group_label.index[group_label == label]
        ordered = members[np.argsort(_stable_rank(pd.Series(members), seed), kind="stable")]
        n = len(ordered)
        n_test, n_val = round(n * test_fraction), round(n * val_fraction)
        side[ordered[:n_test]] = "test"
        side[ordered[n_test : n_test + n_val]] = "val"
    assigned = keys.map(side)
    parts = {
        name: data[assigned == name].reset_index(drop=True) for name in ("train", "val", "test")
    }
    split = Split(**parts)
    for name, part in parts.items():
        if part["label"].nunique() < 2:
            raise ValueError(
                f"the {name} split has only one class ({len(part)} rows); label more anomalous "
                "and normal records or lower the minimum per class"
            )
    logger.info("split sizes %s", split.sizes())
    return split


def fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 over (id, text, label) in id order: identifies the training data exactly."""
    digest = hashlib.sha256()
    ordered = frame.sort_values("id", kind="stable")
    for row in ordered[["id", "text", "label"]].itertuples(index=False):
        digest.update(f"{row.id}\x1f{row.text}\x1f{row.label}\x1e".encode())
    return digest.hexdigest()
