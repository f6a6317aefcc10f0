"""The quality suite: labelled sets of several regimes, derived deterministically.

Each set is a frame with columns id, text, label. Real sets are read from CSV files
(`../shared/data` by default); the derived ones are drawn from them, or from the demo
generator, with fixed seeds, so a run anywhere sees the same rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomdet import demo
from anomdet.baseline import evaluate_baseline
from anomdet.csv_import import read_records_csv
from anomdet.data import Split, normalise_text, split_records
from anomdet.inference import Progress
from anomdet.metrics import best_f1
from anomdet.settings import TrainingSettings
from anomdet.training import evaluate, train_challenger

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path("../shared/data")
SEED = 20261201



@dataclass(frozen=True)
class BenchSet:
    """One named set of the suite and what regime it stands for."""

    name: str
    regime: str
    load: Callable[[], pd.DataFrame]


def read_labelled_csv(path: Path) -> pd.DataFrame:
    """A labelled CSV (id,text,label) as the benchmark's frame; every row needs a label."""
    frame = read_records_csv(Path(path))
    unlabelled = frame["label"].isna()
    if unlabelled.any():
        ids = frame.loc[unlabelled, "id"].head(10).tolist()
        raise ValueError(
            f"{path}: {int(unlabelled.sum())} row(s) have no label (ids {ids}...); the benchmark "
            "needs a 0/1 label on every row, so label them or drop them from the file"
        )
    return frame.assign(label=frame["label"].astype(int))[["id", "text", "label"]]


def _renumber(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.reset_index(drop=True).assign(id=np.arange(1, len(frame) + 1))


def small(frame: pd.DataFrame, rows: int = 1300, anomalies: int = 50) -> pd.DataFrame:
    """`rows` rows of which `anomalies` are anomalous, drawn without replacement."""
    rng = np.random.default_rng(SEED)
    pos, neg = frame[frame["label"] == 1], frame[frame["label"] == 0]
    take_pos = pos.iloc[rng.choice(len(pos), anomalies, replace=False)]
    take_neg = neg.iloc[rng.choice(len(neg), rows - anomalies, replace=False)]
    return _renumber(pd.concat([take_pos, take_neg]).sample(frac=1.0, random_state=SEED))


def balanced(frame: pd.DataFrame, rows: int = 1400) -> pd.DataFrame:
    """About `rows` rows, half of them anomalous (fewer if the anomalies run out)."""
    rng = np.random.default_rng(SEED)
    pos, neg = frame[frame["label"] == 1], frame[frame["label"] == 0]
    half = min(rows // 2, len(pos))
    take_pos = pos.iloc[rng.choice(len(pos), half, replace=False)]
    take_neg = neg.iloc[rng.choice(len(neg), rows - half, replace=False)]
    return _renumber(pd.concat([take_pos, take_neg]).sample(frac=1.0, random_state=SEED))


#: Words that spam messages use and conversations rarely do: a set whose spam names them
#: is the regime where a bag of words is strongest.
SPAM_WORDS = ("free", "win", "prize", "claim", "cash", "call", "txt", "text", "reply", "www",
              "http", "urgent", "mobile", "offer", "£")


def short_spam(frame: pd.DataFrame, rows: int = 1200, max_chars: int = 160) -> pd.DataFrame:
    """Short, balanced, keyword-rich spam: up to `rows` // 2 spam messages of at most
    `max_chars` characters that name one of `SPAM_WORDS`, beside as many short normal
    messages, drawn without replacement (fewer if such spam runs out)."""
    rng = np.random.default_rng(SEED)
    short = frame[frame["text"].str.len() <= max_chars]
    named = short["text"].str.lower().str.contains("|".join(SPAM_WORDS), regex=True)
    pos, neg = short[(short["label"] == 1) & named], short[short["label"] == 0]
    half = min(rows // 2, len(pos), len(neg))
    take_pos = pos.iloc[rng.choice(len(pos), half, replace=False)]
    take_neg = neg.iloc[rng.choice(len(neg), half, replace=False)]
    return _renumber(pd.concat([take_pos, take_neg]).sample(frac=1.0, random_state=SEED))


def repetitive_logs(rows: int = 1350, families: int = 4, texts_per_family: int = 5,
                    anomalies: int = 50) -> pd.DataFrame:
    """Log lines whose anomalies are a few message texts repeated many times.

    Normal lines come from the demo generator. The anomalies come from `families` of
    its anomaly families, `texts_per_family` distinct lines each, repeated until there
    are `anomalies` of them. Since the split keeps every copy of a text on one side,
    the anomalous texts on the test side are lines that training never saw.
    """
    rng = np.random.default_rng(SEED)
    normal = demo.generate_demo_records(rows - anomalies, anomaly_rate=0.01,
                                        labelled_fraction=1.0, seed=SEED)
    normal = normal[normal["label"] == 0]["text"].tolist()[: rows - anomalies]
    chosen = rng.choice(len(demo.ANOMALIES), families, replace=False)
    distinct = [line for i in chosen for line in demo.ANOMALIES[i][1](rng, texts_per_family)]
    # Every distinct text at least once, the rest repeated with uneven frequencies.
    weights = rng.dirichlet(np.full(len(distinct), 2.0))
    extra = rng.choice(distinct, size=anomalies - len(distinct), p=weights).tolist()
    repeated = distinct + extra
    frame = pd.DataFrame({"text": normal + repeated,
                          "label": [0] * len(normal) + [1] * len(repeated)})
    return _renumber(frame.sample(frac=1.0, random_state=SEED))


def demo_set(rows: int) -> pd.DataFrame:
    """The demo records, every one labelled, as `anomdet demo --rows N` seeds them."""
    frame = demo.generate_demo_records(rows, anomaly_rate=0.1, labelled_fraction=1.0)
    return frame.assign(label=frame["label"].astype(int))[["id", "text", "label"]]


def default_suite(data_dir: Path = DEFAULT_DATA_DIR) -> list[BenchSet]:
    """The regimes the default recipe must win in (see the README's Benchmarks)."""
    sms = data_dir / "sms_spam.csv"
    hate = data_dir / "davidson_hate.csv"
    return [
        BenchSet("small", "1,300 rows, 50 anomalies (from sms_spam)",
                 lambda: small(read_labelled_csv(sms))),
        BenchSet("repetitive_logs", "log lines, anomalies a few texts repeated",
                 repetitive_logs),
        BenchSet("balanced", "about 50% anomalies (from davidson_hate)",
                 lambda: balanced(read_labelled_csv(hate))),
        BenchSet("short_spam", "short messages, half of them spam that names a spam word "
                 "(from sms_spam)", lambda: short_spam(read_labelled_csv(sms))),
        BenchSet("sms_spam", "real, 13% anomalies", lambda: read_labelled_csv(sms)),
        BenchSet("demo_1500", "demo log lines, 1,500 rows", lambda: demo_set(1500)),
        BenchSet("demo_3000", "demo log lines, 3,000 rows", lambda: demo_set(3000)),
        BenchSet("davidson_hate", "real, 6% anomalies, noisy labels, hard negatives",
                 lambda: read_labelled_csv(hate)),
    ]


QUALITY_KEYS = ("f1", "precision", "recall", "pr_auc")
# The F1 each model would reach at the threshold best for the test split itself (see
# anomdet.metrics.best_f1): the part of a shortfall that no choice of threshold repairs.
BEST_THRESHOLD_KEYS = ("f1_best_threshold", "baseline_f1_best_threshold")


def _split(frame: pd.DataFrame, settings: TrainingSettings) -> Split:
    return split_records(frame, val_fraction=settings.val_fraction,
                         test_fraction=settings.test_fraction, seed=settings.split_seed)


def quality_once(frame: pd.DataFrame, *, seed: int, base_model: str = "bundled",
                 overrides: dict[str, Any] | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """One split seed: the fine-tuned model and the baseline on the same split.

    Both are thresholded on validation and measured on the de-duplicated test split, as
    the retrain flow does; the seed sets the split and the training alike.
    """
    settings = TrainingSettings(base_model=base_model, seed=seed, split_seed=seed,
                                **(overrides or {}))
    split = _split(frame, settings)
    started = time.perf_counter()
    challenger = train_challenger(split, settings, progress=progress)
    train_seconds = time.perf_counter() - started
    ours = evaluate(challenger.scoring_model, challenger.tokenizer, split.test,
                    challenger.threshold, max_length=challenger.config.max_length,
                    batch_size=challenger.config.eval_batch_size, lexical=challenger.lexical)
    baseline = evaluate_baseline(split, seed=seed)
    return {"seed": seed, "test_rows": len(split.test),
            "test_anomalies": int(split.test["label"].sum()),
            **{k: float(ours.metrics[k]) for k in QUALITY_KEYS},
            **{f"baseline_{k}": float(baseline.metrics[k]) for k in QUALITY_KEYS},
            "f1_best_threshold": best_f1(ours.labels, ours.scores),
            "baseline_f1_best_threshold": best_f1(baseline.labels, baseline.scores),
            "train_seconds": train_seconds, "steps": challenger.result.steps,
            "precision_used": challenger.precision}


def describe(frame: pd.DataFrame) -> dict[str, int]:
    """Rows, anomalies and distinct anomalous texts (case and spacing folded)."""
    anomalous = frame[frame["label"] == 1]["text"].map(normalise_text)
    return {"rows": len(frame), "anomalies": int((frame["label"] == 1).sum()),
            "distinct_anomalous_texts": int(anomalous.nunique())}


def summarise(name: str, regime: str, frame: pd.DataFrame,
              runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the suite: each figure's mean and standard deviation over the seeds."""
    row: dict[str, Any] = {"set": name, "regime": regime, **describe(frame),
                           "seeds": [r["seed"] for r in runs]}
    for key in (*QUALITY_KEYS, *(f"baseline_{k}" for k in QUALITY_KEYS), *BEST_THRESHOLD_KEYS,
                "train_seconds"):
        values = np.array([r[key] for r in runs], dtype=float)
        row[f"{key}_mean"] = float(values.mean())
        row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    row["f1_gain_mean"] = row["f1_mean"] - row["baseline_f1_mean"]
    row["at_or_above_baseline"] = row["f1_mean"] >= row["baseline_f1_mean"]
    row["seeds_at_or_above"] = sum(r["f1"] >= r["baseline_f1"] for r in runs)
    row["runs"] = runs
    return row


def run_suite(sets: list[BenchSet], *, seeds: int, first_seed: int = 42,
              base_model: str = "bundled",
              overrides: dict[str, Any] | None = None,
              progress: Callable[[str, int, int], None] | None = None,
              on_row: Callable[[list[dict[str, Any]]], None] | None = None,
              ) -> list[dict[str, Any]]:
    """Every set of the suite over `seeds` split seeds (first_seed, first_seed + 1, ...).

    `on_row` receives the rows so far after each set, so a long run keeps what it measured.
    """
    rows = []
    for bench_set in sets:
        frame = bench_set.load()
        runs = []
        for seed in range(first_seed, first_seed + seeds):
            stage = f"{bench_set.name}, seed {seed}: fine-tuning"
            runs.append(quality_once(
                frame, seed=seed, base_model=base_model, overrides=overrides,
                progress=(lambda d, t, s=stage: progress(s, d, t)) if progress else None))
            logger.info("%s seed %d: f1 %.4f, baseline %.4f, %.0f s", bench_set.name, seed,
                        runs[-1]["f1"], runs[-1]["baseline_f1"], runs[-1]["train_seconds"])
        rows.append(summarise(bench_set.name, bench_set.regime, frame, runs))
        if on_row:
            on_row(rows)
    return rows
