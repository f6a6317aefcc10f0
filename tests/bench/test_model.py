"""The benchmark end to end on a small synthetic CSV with a tiny random BERT: every
figure is present and sane, the test split is the de-duplicated one, nothing leaks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from anomdet.data import normalise_text
from bench import report_console
from bench.model import bench_command, load_split, select_sets, shared_texts, suite_table
from bench.suite import BenchSet

SEED = 5
KEYS = (
    "rows", "test_rows", "f1", "precision", "recall", "pr_auc", "baseline_f1",
    "scoring_texts_per_s", "pipeline_texts_per_s", "scoring_speedup",
    "training_samples_per_s", "trainer_samples_per_s", "training_speedup", "seconds",
    "truncated", "epochs", "best_epoch", "train_test_shared_texts",
)
RATES = ("scoring_texts_per_s", "pipeline_texts_per_s", "scoring_speedup",
         "training_samples_per_s", "trainer_samples_per_s", "training_speedup",
         "bulk_scoring_texts_per_s", "pipeline_batched_texts_per_s", "batched_scoring_speedup")


def _write_csv(path: Path, n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    normal = ["meeting {} moved to friday", "invoice {} paid, thanks", "see you at {} tonight"]
    spam = ["WIN a free prize {} call now", "urgent! claim your cash reward {} today"]
    labels = (rng.random(n) < 0.25).astype(int)
    texts = [(spam if y else normal)[rng.integers(2)].format(rng.integers(120))
             for y in labels]
    # Exact and case/spacing variants of earlier rows: a row-level split would leak them.
    for i in range(0, n, 7):
        texts[i] = texts[i + 1].upper().replace(" ", "  ")
        labels[i] = labels[i + 1]
    frame = pd.DataFrame({"id": np.arange(1, n + 1), "text": texts, "label": labels})
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path, dict]:
    folder = tmp_path_factory.mktemp("bench")
    csv_path, json_path = folder / "records.csv", folder / "bench.json"
    frame = _write_csv(csv_path)
    app = typer.Typer()
    app.command()(bench_command)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "TRANSFORMERS_VERBOSITY"):
            patch.delenv(name, raising=False)
        outcome = CliRunner().invoke(app, [
            "--data", str(csv_path), "--json", str(json_path), "--base-model", "tiny-random",
            "--epochs", "1", "--min-steps", "10", "--seeds", "2", "--seed", str(SEED),
            "--scoring-rows", "40",
            "--pipeline-rows", "12", "--trainer-steps", "2", "--repeats", "1",
            # int8 times both of anomdet's scoring paths ("auto" keeps the tiny model in fp32).
            "--precision", "int8",
        ])
    assert outcome.exit_code == 0, outcome.output
    return frame, csv_path, json.loads(json_path.read_text())


def test_json_has_every_figure_with_sane_values(bench: tuple) -> None:
    _, _, result = bench
    missing = [key for key in KEYS if key not in result]
    assert not missing
    for key in RATES:
        assert math.isfinite(result[key]) and result[key] > 0, key
    for key in ("f1", "precision", "recall", "pr_auc", "baseline_f1"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["epochs"] == 1 and 1 <= result["best_epoch"] <= 6
    assert result["seconds"] > 0
    # The device is named beside the ratios (a CPU here: CI has no GPU).
    assert result["device_type"] == "cpu" and result["device"]
    assert result["scoring_dtype"] == result["pipeline_dtype"] == "float32"


def test_both_loops_are_timed_on_the_same_samples_and_both_scorers_agree(bench: tuple) -> None:
    _, _, result = bench
    # Trainer runs at anomdet's batch size: 2 timed steps of 16, after one untimed step.
    assert result["trainer_batch_size"] == result["batch_size"] == 16
    assert result["training_timed_samples"] == 32
    assert result["scoring_timed_texts"] == 12
    assert result["bulk_scoring_rows"] == 40
    assert result["scoring_max_abs_diff"] < 1e-4
    # The batched duel: pipeline() at each batch size, the fastest the reference, scoring
    # the same texts as anomdet.
    by_size = result["pipeline_batched_by_size"]
    assert sorted(int(size) for size in by_size) == [32, 64, 256]
    assert result["pipeline_batched_texts_per_s"] == max(by_size.values())
    assert str(result["pipeline_best_batch_size"]) in {str(s) for s in by_size}
    assert result["batched_scoring_speedup"] == pytest.approx(
        result["bulk_scoring_texts_per_s"] / result["pipeline_batched_texts_per_s"])
    assert result["batched_max_abs_diff"] < 0.1
    # The int8 path is timed with the fp32 path beside it.
    assert result["inference_precision"] == "int8"
    assert result["fp32_scoring_texts_per_s"] > 0 and 0.0 <= result["fp32_f1"] <= 1.0
    assert 0.0 < result["int8_max_abs_diff"] < 0.1


def test_counts_describe_the_deduplicated_split(bench: tuple) -> None:
    frame, csv_path, result = bench
    split = load_split(csv_path, seed=SEED)
    assert result["rows"] == len(frame)
    assert result["test_rows"] == len(split.test)
    assert result["val_rows"] == len(split.val)
    assert result["train_rows_split"] == len(split.train)
    assert result["train_test_shared_texts"] == 0
    assert not shared_texts(split.train, split.test)
    assert not shared_texts(split.val, split.test)
    # The CSV does hold duplicates, so the leak check above is not vacuous.
    assert frame["text"].map(normalise_text).duplicated().sum() >= 40


def test_unlabelled_rows_are_refused_with_their_ids(tmp_path: Path) -> None:
    path = tmp_path / "records.csv"
    pd.DataFrame({"id": [1, 2, 3], "text": ["a", "b", "c"], "label": ["0", "", "1"]}).to_csv(
        path, index=False)
    with pytest.raises(ValueError, match=r"1 row\(s\) have no label \(ids \[2\]"):
        load_split(path, seed=0)


def test_suite_row_summarises_the_seeds_it_ran(bench: tuple) -> None:
    frame, _, result = bench
    (row,) = result["suite"]
    runs = row["runs"]
    assert [r["seed"] for r in runs] == [SEED, SEED + 1] and result["seeds"] == 2
    # The first seed's quality is the single-set benchmark's own figure, not a rerun.
    assert runs[0]["f1"] == result["f1"] and runs[0]["baseline_f1"] == result["baseline_f1"]
    assert row["f1_mean"] == pytest.approx(np.mean([r["f1"] for r in runs]))
    assert row["f1_std"] == pytest.approx(np.std([r["f1"] for r in runs], ddof=1))
    assert row["f1_gain_mean"] == pytest.approx(row["f1_mean"] - row["baseline_f1_mean"])
    for run in runs:
        # No threshold chosen on validation beats the one best for the test split itself.
        assert run["f1"] <= run["f1_best_threshold"] <= 1.0
        assert run["baseline_f1"] <= run["baseline_f1_best_threshold"] <= 1.0
    assert row["f1_best_threshold_mean"] == pytest.approx(
        np.mean([r["f1_best_threshold"] for r in runs]))
    assert row["rows"] == len(frame) and row["anomalies"] == int(frame["label"].sum())
    assert row["distinct_anomalous_texts"] == frame[frame["label"] == 1]["text"].map(
        normalise_text).nunique()


def test_the_suite_table_keeps_every_figure_whole_without_a_terminal(
        bench: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    _, _, result = bench
    (row,) = result["suite"]
    console = report_console()
    assert not console.is_terminal  # pytest captures the output, as a log file would
    with console.capture() as captured:
        console.print(suite_table([{**row, "set": "davidson_hate"}] * 2, seeds=2))
    text = captured.get()
    assert "…" not in text
    assert "davidson_hate" in text and f"{row['f1_mean']:.3f} ± {row['f1_std']:.3f}" in text


def test_sets_run_in_the_order_named_and_unknown_names_are_refused() -> None:
    available = [BenchSet(name, "regime", lambda: pd.DataFrame())
                 for name in ("small", "balanced", "davidson_hate")]
    chosen = select_sets(available, " davidson_hate,small ,davidson_hate")
    assert [b.name for b in chosen] == ["davidson_hate", "small"]
    with pytest.raises(ValueError, match=r"unknown set\(s\) tiny; the suite has small, "
                                         r"balanced, davidson_hate"):
        select_sets(available, "small,tiny")
    with pytest.raises(ValueError, match="unknown set"):
        select_sets(available, " , ")


def test_short_spam_is_short_balanced_keyword_rich_and_repeatable() -> None:
    from bench.suite import SPAM_WORDS, short_spam

    rng = np.random.default_rng(0)
    spam = [f"{w} offer {i}: reply now" for i, w in enumerate(rng.choice(["win", "free"], 60))]
    frame = pd.DataFrame({
        "id": range(1, 221),
        "text": spam + ["x" * 200] * 20 + ["hello there"] * 20  # spam: too long, no spam word
        + [f"see you at {i}" for i in range(100)] + ["y" * 300] * 20,
        "label": [1] * 100 + [0] * 120})
    chosen = short_spam(frame, rows=100, max_chars=160)
    assert (chosen["label"] == 1).sum() == (chosen["label"] == 0).sum() == 50
    assert chosen["text"].str.len().max() <= 160
    spam_texts = chosen.loc[chosen["label"] == 1, "text"].str.lower()
    assert spam_texts.map(lambda t: any(w in t for w in SPAM_WORDS)).all()
    assert chosen.equals(short_spam(frame, rows=100, max_chars=160))
    assert list(chosen["id"]) == list(range(1, 101))
