"""Keep the scores behind the suite's figures, to weigh a cut or a blend without training.

`python -m bench.scores capture DIR [--sets a,b] [--seeds 3] [--set NAME=VALUE ...]` trains
each split as `bench.suite.quality_once` does and writes `DIR/SET_SEED.npz`: validation and
test labels, the encoder's probabilities alone, the n-gram model's log-odds and the
baseline's probabilities. `--set` changes a training setting (as `learning_rate=5e-5`).
`python -m bench.scores compare DIR` prints, for every split kept there, the test F1 at the
cut chosen on validation, the test PR-AUC, the F1 at the test split's own best cut, and the
validation F1 and PR-AUC, of the baseline, the encoder alone and the recipe's blend of both,
and each set's means.

A split costs what the suite spends on it (minutes on a CPU, Davidson about nine); a
comparison of rules then takes seconds, and with the same settings and threads on the same
machine the recipe's own row repeats the suite's figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError
from rich.table import Table
from sklearn.metrics import average_precision_score

from anomdet.baseline import baseline_scores
from anomdet.encoder import quiet_transformers
from anomdet.inference import predict_scores
from anomdet.lexical import Blend, log_odds
from anomdet.metrics import best_f1, choose_threshold, classification_metrics
from anomdet.settings import TrainingSettings
from anomdet.training import train_challenger
from bench import report_console
from bench.suite import DEFAULT_DATA_DIR, _split, default_suite

#: What each kept split holds, by key.
KEYS = ("y_val", "y_test", "encoder_val", "encoder_test", "ngram_val", "ngram_test",
        "baseline_val", "baseline_test")


def _setting(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` as a training setting and its value, checked by the settings model."""
    name, sep, value = text.partition("=")
    if not sep or name not in TrainingSettings.model_fields:
        raise argparse.ArgumentTypeError(f"--set wants NAME=VALUE with NAME a training "
                                         f"setting, got {text!r}")
    return name, value


def capture_split(frame: pd.DataFrame, seed: int,
                  overrides: dict[str, Any]) -> dict[str, np.ndarray]:
    """One split's scores (see `KEYS`), trained as the suite trains it."""
    settings = TrainingSettings(seed=seed, split_seed=seed, **overrides)
    split = _split(frame, settings)
    challenger = train_challenger(split, settings)
    config = challenger.config

    def encoder(texts: list[str]) -> np.ndarray:
        # The scoring model's own probabilities, without the n-gram evidence.
        return predict_scores(challenger.scoring_model, challenger.tokenizer, texts,
                              batch_size=config.eval_batch_size,
                              max_tokens=config.eval_batch_tokens, max_length=config.max_length)

    val, test = split.val["text"].tolist(), split.test["text"].tolist()
    baseline_val, baseline_test = baseline_scores(split, seed=seed)
    if challenger.lexical is not None:
        ngram_val, ngram_test = (challenger.lexical.model.log_odds(val),
                                 challenger.lexical.model.log_odds(test))
    else:  # no n-gram model of its own: the baseline is the same recipe on the same rows
        ngram_val, ngram_test = log_odds(baseline_val), log_odds(baseline_test)
    return {"y_val": split.val["label"].to_numpy(), "y_test": split.test["label"].to_numpy(),
            "encoder_val": encoder(val), "encoder_test": encoder(test),
            "ngram_val": ngram_val, "ngram_test": ngram_test,
            "baseline_val": baseline_val, "baseline_test": baseline_test}


def capture(out: Path, sets: list[str] | None, seeds: int, overrides: dict[str, Any],
            data_dir: Path = DEFAULT_DATA_DIR) -> list[Path]:
    """Train every split of `sets` (all the suite's by default) and keep its scores."""
    suite = {bench_set.name: bench_set for bench_set in default_suite(data_dir)}
    unknown = sorted(set(sets or []) - set(suite))
    if unknown:
        raise SystemExit(f"error: no suite set named {', '.join(unknown)}; "
                         f"the suite has {', '.join(suite)}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sets or list(suite):
        frame = suite[name].load()
        for seed in range(42, 42 + seeds):
            started = time.perf_counter()
            path = out / f"{name}_{seed}.npz"
            np.savez(path, **capture_split(frame, seed, overrides))
            print(f"{path}: {time.perf_counter() - started:.0f} s", flush=True)
            written.append(path)
    return written


MODELS = ("baseline", "encoder", "blend")
#: What `measure` gives per model, and its column heading.
FIGURES = {"f1": "test F1", "pr_auc": "test PR-AUC", "f1_best": "test F1 at its best cut",
           "val_f1": "validation F1", "val_pr_auc": "validation PR-AUC"}


def rules(kept: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each model's validation and test scores: the baseline, the encoder alone, and the
    recipe's blend (fitted on validation as `anomdet.training` fits it)."""
    blend = Blend.fit(kept["y_val"], kept["encoder_val"], kept["ngram_val"])
    return {"baseline": (kept["baseline_val"], kept["baseline_test"]),
            "encoder": (kept["encoder_val"], kept["encoder_test"]),
            "blend": (blend.scores(kept["encoder_val"], kept["ngram_val"]),
                      blend.scores(kept["encoder_test"], kept["ngram_test"]))}


def measure(kept: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per model of `rules` (see `FIGURES`): test F1 at its validation cut, test PR-AUC,
    best-cut F1, and the validation F1 at that cut and validation PR-AUC."""
    y_val, y_test = kept["y_val"], kept["y_test"]
    figures = {}
    for model, (val, test) in rules(kept).items():
        cut = choose_threshold(y_val, val)
        figures[model] = {"f1": float(classification_metrics(y_test, test, cut)["f1"]),
                          "pr_auc": float(average_precision_score(y_test, test)),
                          "f1_best": best_f1(y_test, test),
                          "val_f1": float(classification_metrics(y_val, val, cut)["f1"]),
                          "val_pr_auc": float(average_precision_score(y_val, val))}
    return figures


def compare(directory: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Print and return `measure`'s figures for every split kept in `directory`, and
    each set's means under the name `SET mean`."""
    paths = sorted(directory.glob("*.npz"))
    if not paths:
        raise SystemExit(f"error: no kept splits (*.npz) in {directory}; "
                         "write them with `python -m bench.scores capture`")
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for path in paths:
        with np.load(path) as kept:
            rows[path.stem] = measure({key: kept[key] for key in KEYS})
    for name in sorted({stem.rsplit("_", 1)[0] for stem in rows}):
        splits = [row for stem, row in rows.items() if stem.rsplit("_", 1)[0] == name]
        rows[f"{name} mean"] = {model: {k: float(np.mean([s[model][k] for s in splits]))
                                        for k in splits[0][model]} for model in splits[0]}
    table = Table("split", "model", *FIGURES.values())
    for stem, row in rows.items():
        for model in MODELS:
            table.add_row(stem if model == MODELS[0] else "", model,
                          *(f"{row[model][k]:.4f}" for k in FIGURES),
                          end_section=model == MODELS[-1])
    report_console().print(table)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    keep = commands.add_parser("capture", help="train the suite's splits and keep scores")
    keep.add_argument("out", type=Path)
    keep.add_argument("--sets", type=lambda s: [n.strip() for n in s.split(",") if n.strip()])
    keep.add_argument("--seeds", type=int, default=3)
    keep.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    keep.add_argument("--set", dest="settings", type=_setting, action="append", default=[])
    commands.add_parser("compare", help="weigh the kept scores").add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "capture":
        overrides = dict(args.settings)
        for name, value in overrides.items():
            try:  # checked before any training, one setting at a time to name the bad one
                TrainingSettings(**{name: value})
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                raise SystemExit(f"error: {name}={value}: {reason}; see `anomdet.settings."
                                 "TrainingSettings` for the setting's range") from None
        quiet_transformers()
        capture(args.out, args.sets, args.seeds, overrides, args.data_dir)
    else:
        compare(args.dir)


if __name__ == "__main__":
    main()
