"""The kept scores repeat the suite's own figures: the recipe's blend, weighed offline from
them, gives the F1 that `bench.suite.quality_once` measures on the same split, and the
baseline's the suite's baseline F1. Bad arguments are one error line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import scores
from bench.suite import quality_once

SEED = 7
OVERRIDES = {"base_model": "tiny-random", "min_steps": 30, "max_steps": 30,
             "inference_precision": "fp32"}


def _frame(n: int = 400) -> pd.DataFrame:
    """Two vocabularies that overlap, and a share of labels that disagree with the words,
    so that no model scores the test split perfectly and the figures can differ."""
    rng = np.random.default_rng(SEED)
    words = ["meeting", "invoice", "tonight", "friday", "prize", "cash", "claim", "call",
             "reply", "thanks", "free", "office"]
    labels = (rng.random(n) < 0.3).astype(int)
    texts = []
    for i, y in enumerate(labels):
        pool = words[4:] if y else words[:8]
        texts.append(" ".join(rng.choice(pool, size=5)) + f" {i}")
    noisy = rng.random(n) < 0.1
    labels[noisy] = 1 - labels[noisy]
    return pd.DataFrame({"id": np.arange(1, n + 1), "text": texts, "label": labels})


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    frame = _frame()
    folder = tmp_path_factory.mktemp("scores")
    np.savez(folder / f"toy_{SEED}.npz", **scores.capture_split(frame, SEED, OVERRIDES))
    suite_run = quality_once(frame, seed=SEED, base_model="tiny-random",
                             overrides={k: v for k, v in OVERRIDES.items() if k != "base_model"})
    return folder, suite_run


def test_the_kept_scores_repeat_the_suites_figures(kept: tuple[Path, dict]) -> None:
    folder, suite_run = kept
    rows = scores.compare(folder)
    split, mean = rows[f"toy_{SEED}"], rows["toy mean"]
    assert 0.0 < suite_run["f1"] < 1.0
    assert split["blend"]["f1"] == pytest.approx(suite_run["f1"], abs=1e-9)
    assert split["blend"]["pr_auc"] == pytest.approx(suite_run["pr_auc"], abs=1e-9)
    assert split["baseline"]["f1"] == pytest.approx(suite_run["baseline_f1"], abs=1e-9)
    assert mean == split
    with np.load(folder / f"toy_{SEED}.npz") as saved:
        assert set(saved.files) == set(scores.KEYS)
        assert saved["encoder_test"].shape == saved["y_test"].shape


def test_an_empty_folder_or_a_bad_setting_is_one_error_line(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit, match=r"^error: no kept splits .*capture"):
        scores.main(["compare", str(tmp_path)])
    with pytest.raises(SystemExit):
        scores.main(["capture", str(tmp_path), "--set", "no_such_setting=1"])
    assert "NAME a training setting" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"^error: learning_rate=fast: "):
        scores.main(["capture", str(tmp_path), "--set", "learning_rate=fast"])
