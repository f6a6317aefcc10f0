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


# Tier k starts its positions at frac(k * golden ratio): tiers of one or two groups then
# land on different sides instead of all rounding the same way.
_GOLDEN = (5**0.5 - 1) / 2


def _positions(sizes: pd.Series, seed: int) -> pd.Series:
    """Each duplicate group's place in [0, 1) within its class.

    Groups are dealt in tiers of similar size (1, 2-3, 4-7, ... copies), each tier in a
    seeded hash order spread evenly over [0, 1), so cutting at the split fractions gives
    each side its share of the distinct texts and of the rows, even when a few texts
    repeat many times. Hash order rather than a random permutation: a text keeps its
    place however many other rows arrive (a new group moves the others of its tier by
    1/n at most), so splits stay stable and the champion is not tested on its training.
    """
    tiers = np.floor(np.log2(sizes.to_numpy(dtype=np.float64))).astype(int)
    start = float(_stable_rank(pd.Series(["tiers"]), seed)[0]) / 2.0**64
    place = pd.Series(0.0, index=sizes.index)
    for tier in np.unique(tiers):
        members = sizes.index[tiers == tier]
        ordered = members[np.argsort(_stable_rank(pd.Series(members), seed), kind="stable")]
        spread = (np.arange(len(ordered)) + 0.5) / len(ordered)
        place[ordered] = (spread + start + tier * _GOLDEN) % 1.0
    return place


# A held-out side should hold at least this many distinct texts of each class (fewer when
# the class has few): one or two texts judge a model on what it makes of them alone.
MIN_HELD_OUT_TEXTS = 3


def _held_out_want(groups: int) -> int:
    """Distinct texts of a class that validation and test each get at least."""
    return 0 if groups < 3 else max(1, min(MIN_HELD_OUT_TEXTS, groups // 5))


def _oversized(sizes: pd.Series, test_fraction: float, val_fraction: float) -> pd.Index:
    """Groups with more rows than a held-out side's share of their class.

    Such a text cannot be dealt fairly: on the test side it would be most of the class's
    test rows (the score would judge one text), and training would lose all its copies.
    It goes to training, where its copies count once anyway.
    """
    limit = min(test_fraction, val_fraction) * float(sizes.sum())
    return sizes.index[sizes > max(limit, 1.0)]


def _deal(place: pd.Series, sizes: pd.Series, test_fraction: float, val_fraction: float,
          fixed: pd.Index) -> pd.Series:
    """Sides by place, `fixed` groups in training; a held-out side left with fewer than
    a few groups of this class takes the smallest free ones from training, and only
    when none is left the smallest fixed one."""
    bounds = {"test": (0.0, test_fraction), "val": (test_fraction, test_fraction + val_fraction)}
    side = pd.Series("train", index=place.index)
    free = ~place.index.isin(fixed)
    for name, (low, high) in bounds.items():
        side[free & (place >= low) & (place < high)] = name
    want = _held_out_want(len(place))
    for name, (low, high) in bounds.items():
        while (side == name).sum() < want:
            spare = place[(side == "train") & free]
            if spare.empty:
                side[sizes[side.index[side == "train"]].idxmin()] = name
                continue
            # The smallest free group, the nearest among equals: a side topped up to a few
            # texts keeps its share of the rows.
            distance = np.minimum(abs(spare - low), abs(spare - high))
            order = pd.DataFrame({"size": sizes[spare.index], "distance": distance})
            side[order.sort_values(["size", "distance"], kind="stable").index[0]] = name
    return side


def split_records(
    frame: pd.DataFrame, *, val_fraction: float, test_fraction: float, seed: int
) -> Split:
    """Split labelled records into train/validation/test, stratified by label.

    Rows whose normalised texts are equal form one group and land on one side, so
    duplicates never inflate test scores. The group's label is its majority label.
    Groups are dealt class by class (see `_positions`), so each side gets its share of
    the anomalies and of the distinct anomalous texts. A group too big to deal fairly
    goes to training (see `_oversized`), and validation and test each keep at least a
    few distinct texts of each class.
    """
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in (0, 1) with a sum below 1")
    data = frame.assign(label=frame["label"].astype(int))
    keys = data["text"].map(normalise_text)
    groups = pd.DataFrame({"key": keys, "label": data["label"]}).groupby("key")["label"]
    group_label = (groups.mean() >= 0.5).astype(int)
    sizes = groups.size()
    side = pd.Series("train", index=group_label.index)
    for label in (0, 1):
        members = group_label.index[group_label == label]
        if len(members) == 0:
            continue
        fixed = _oversized(sizes[members], test_fraction, val_fraction)
        free = members[~members.isin(fixed)]
        place = _positions(sizes[free], seed) if len(free) else pd.Series(dtype=float)
        place = pd.concat([place, pd.Series(1.0, index=fixed)])
        side[place.index] = _deal(place, sizes[place.index], test_fraction, val_fraction,
                                  fixed)
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
    logger.info("split sizes %s; anomalies %s", split.sizes(),
                {name: int(part["label"].sum()) for name, part in parts.items()})
    return split


def fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 over (id, text, label) in id order: identifies the training data exactly."""
    digest = hashlib.sha256()
    ordered = frame.sort_values("id", kind="stable")
    for row in ordered[["id", "text", "label"]].itertuples(index=False):
        digest.update(f"{row.id}\x1f{row.text}\x1f{row.label}\x1e".encode())
    return digest.hexdigest()
