"""Splits are honest (duplicates on one side), stratified, deterministic and stable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anomdet.data import fingerprint, normalise_text, split_records


def _frame(n: int = 1000) -> pd.DataFrame:
    texts = [f"message number {i % 700}" for i in range(n)]  # 300 repeated texts
    labels = [1 if (i % 700) % 10 == 0 else 0 for i in range(n)]
    return pd.DataFrame({"id": range(1, n + 1), "text": texts, "label": labels})


def test_duplicates_never_straddle_splits() -> None:
    split = split_records(_frame(), val_fraction=0.15, test_fraction=0.2, seed=1)
    sides = [set(part["text"].map(normalise_text)) for part in (split.train, split.val, split.test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert sum(split.sizes().values()) == 1000


def test_case_and_spacing_variants_count_as_duplicates() -> None:
    frame = _frame(1000)  # rows 0 and 700 share "message number 0"
    frame.loc[0, "text"] = "  MESSAGE   number 0 "
    split = split_records(frame, val_fraction=0.2, test_fraction=0.2, seed=1)
    for part in (split.train, split.val, split.test):
        if "  MESSAGE   number 0 " in set(part["text"]):
            assert "message number 0" in set(part["text"])


def test_split_is_stratified_and_deterministic() -> None:
    frame = _frame()
    a = split_records(frame, val_fraction=0.15, test_fraction=0.2, seed=7)
    b = split_records(frame.sample(frac=1, random_state=3), val_fraction=0.15,
                      test_fraction=0.2, seed=7)
    assert sorted(a.test["id"]) == sorted(b.test["id"])
    rate = frame["label"].mean()
    for part in (a.train, a.val, a.test):
        assert abs(part["label"].mean() - rate) < 0.03
    c = split_records(frame, val_fraction=0.15, test_fraction=0.2, seed=8)
    assert sorted(a.test["id"]) != sorted(c.test["id"])


def test_split_is_stable_when_new_rows_arrive() -> None:
    frame = _frame(700)
    before = split_records(frame, val_fraction=0.15, test_fraction=0.2, seed=7)
    grown = pd.concat([frame, pd.DataFrame({"id": range(701, 771),
                                            "text": [f"new text {i}" for i in range(70)],
                                            "label": [0] * 63 + [1] * 7})])
    after = split_records(grown, val_fraction=0.15, test_fraction=0.2, seed=7)
    moved = set(before.train["id"]) & set(after.test["id"])
    # Only texts at the stratum boundaries may move; most of the test set is unchanged.
    assert len(moved) <= 0.05 * len(before.test)


def test_split_refuses_bad_fractions_and_one_class_sides() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_records(_frame(), val_fraction=0.6, test_fraction=0.5, seed=0)
    tiny = pd.DataFrame({"id": [1, 2, 3, 4], "text": list("abcd"), "label": [0, 0, 0, 1]})
    with pytest.raises(ValueError, match="only one class"):
        split_records(tiny, val_fraction=0.25, test_fraction=0.25, seed=0)


def test_fingerprint_ignores_row_order_but_not_content() -> None:
    frame = _frame(50)
    assert fingerprint(frame) == fingerprint(frame.iloc[::-1])
    changed = frame.copy()
    changed.loc[3, "label"] = 1 - changed.loc[3, "label"]
    assert fingerprint(changed) != fingerprint(frame)


def test_each_side_gets_its_share_of_anomalies_and_of_distinct_anomalous_texts() -> None:
    # 12 anomalous texts, a few of them repeated many times: the regime of log lines.
    repeats = [19, 6, 6, 5, 4, 2, 2, 2, 1, 1, 1, 1]
    anomalies = [f"job {k} failed with code {k * 7}" for k, n in enumerate(repeats)
                 for _ in range(n)]
    normal = [f"job {k} finished in {k % 50} s" for k in range(1300)]
    frame = pd.DataFrame({"id": range(1, 1351), "text": normal + anomalies,
                          "label": [0] * 1300 + [1] * 50})
    dealt = []
    for seed in range(40):
        split = split_records(frame, val_fraction=0.15, test_fraction=0.2, seed=seed)
        sides = [part[part["label"] == 1] for part in (split.test, split.val)]
        dealt.append([n for side in sides for n in (len(side), side["text"].nunique())])
        # Every held-out side holds a few distinct anomalous texts (2 of 12 here).
        assert all(side["text"].nunique() >= 2 for side in sides)
        # The text repeated 19 times is more than a held-out side's share of the 50
        # anomalies (7.5 rows): it cannot be dealt fairly, so it trains.
        assert (split.train["text"] == anomalies[0]).sum() == 19
    rows_test, texts_test, rows_val, texts_val = np.mean(dealt, axis=0)
    # On average each side gets its share of the other 31 anomalies and of the 11 texts.
    assert 0.2 * 31 * 0.75 <= rows_test <= 0.2 * 31 * 1.25
    assert 0.15 * 31 * 0.75 <= rows_val <= 0.15 * 31 * 1.25
    # Validation's share (1.65 texts) is topped up to the 2 texts every side keeps.
    assert abs(texts_test - 0.2 * 11) < 0.5 and 2 <= texts_val < 0.15 * 11 + 1


def test_an_oversized_group_trains_and_the_held_out_sides_keep_distinct_texts() -> None:
    # One alert text makes 40 of 97 alert rows: dealt by place it would be most of a
    # held-out side's alerts and leave training a handful of rows.
    repeats = [40, 9, 6, 5, 4, 3, 3, 2, 2, 2] + [1] * 21
    alerts = [f"kernel: error {k} on node {k * 13}" for k, n in enumerate(repeats)
              for _ in range(n)]
    normal = [f"sshd: session opened for user u{k}" for k in range(1251)]
    frame = pd.DataFrame({"id": range(1, 1349), "text": normal + alerts,
                          "label": [0] * 1251 + [1] * 97})
    for seed in (42, 43, 44):
        split = split_records(frame, val_fraction=0.15, test_fraction=0.2, seed=seed)
        assert (split.train["text"] == alerts[0]).sum() == 40
        for part in (split.val, split.test):
            assert part.loc[part["label"] == 1, "text"].nunique() >= 3
        sides = [set(p["text"].map(str.lower)) for p in (split.train, split.val, split.test)]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])


def test_a_class_of_only_big_groups_still_reaches_every_side() -> None:
    # Every anomalous text is oversized: the smallest go to validation and test, so the
    # split still holds both classes on every side.
    alerts = [f"disk {k} full" for k, n in enumerate([30, 25, 20]) for _ in range(n)]
    normal = [f"ok {k}" for k in range(400)]
    frame = pd.DataFrame({"id": range(1, 476), "text": normal + alerts,
                          "label": [0] * 400 + [1] * 75})
    split = split_records(frame, val_fraction=0.15, test_fraction=0.2, seed=1)
    held = [set(p.loc[p["label"] == 1, "text"]) for p in (split.train, split.val, split.test)]
    assert held == [{"disk 0 full"}, {"disk 2 full"}, {"disk 1 full"}] or all(held)
