"""Benchmark on a labelled CSV: quality against a TF-IDF baseline, speed against stock
transformers (one-text-at-a-time `pipeline()` for scoring, `Trainer` for training).

Everything runs in one process on one de-duplicated split, so all figures share
the same data, the same threads and the same machine load.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from anomdet.baseline import evaluate_baseline
from anomdet.data import Split, normalise_text, split_records
from anomdet.device import configure_threads, describe, inference_dtype, pick_device
from anomdet.encoder import load_base_model, quiet_transformers
from anomdet.finetune import TrainConfig, fine_tune
from anomdet.inference import for_inference, predict_scores
from anomdet.lexical import LexicalEvidence
from anomdet.metrics import best_f1, choose_threshold
from anomdet.promotion import EvalResult
from anomdet.settings import TrainingSettings
from anomdet.training import Challenger, blend_on_validation, evaluate, train_challenger
from bench import report_console
from bench.suite import (
    BEST_THRESHOLD_KEYS,
    BenchSet,
    default_suite,
    read_labelled_csv,
    run_suite,
    summarise,
)

logger = logging.getLogger(__name__)

# Texts per class handed to fine_tune as its (required) validation set while the
# training loop is timed; its scoring happens after the last timed step.
THROUGHPUT_VAL_PER_CLASS = 16
# Untimed training steps before the duel's clock starts (at most; a tenth of the timed
# steps when fewer): a GPU's first steps load kernels and grow its memory pools.
TRAIN_WARMUP_STEPS = 10
# The batched pipeline() runs at each of these batch sizes; the fastest is the reference.
PIPELINE_BATCH_SIZES = (32, 64, 256)

# (stage, done, total): one callback for every stage that reports progress.
StageProgress = Callable[[str, int, int], None]


def load_split(data: Path, *, seed: int) -> Split:
    """The labelled CSV split like the retrain flow does: de-duplicated, stratified, seeded."""
    frame = read_labelled_csv(Path(data))
    fractions = TrainingSettings()  # the retrain flow's split, from its one home
    return split_records(frame, val_fraction=fractions.val_fraction,
                         test_fraction=fractions.test_fraction, seed=seed)


def shared_texts(first: pd.DataFrame, second: pd.DataFrame) -> set[str]:
    """Normalised texts present in both frames (a leak check: it should be empty)."""
    return set(first["text"].map(normalise_text)) & set(second["text"].map(normalise_text))


def device_figures() -> dict[str, Any]:
    """The device the benchmark runs on, named as the results table prints it."""
    device = pick_device()
    profile = describe(device)
    return {"device": profile.name, "device_type": profile.type,
            "scoring_dtype": str(inference_dtype(profile)).removeprefix("torch.")}


def _stage(progress: StageProgress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def _figures(prefix: str, result: EvalResult) -> dict[str, float]:
    keys = ("f1", "precision", "recall", "pr_auc", "roc_auc")
    return ({f"{prefix}{k}": float(result.metrics[k]) for k in keys}
            | {f"{prefix}threshold": result.threshold,
               f"{prefix}f1_best_threshold": best_f1(result.labels, result.scores)})


def _timed_rate(marks: Sequence[tuple[float, int]], warmup: int) -> tuple[float, int]:
    """Samples/s between the first mark at or past `warmup` samples and the last mark.

    Marks are (time, samples done so far) taken after each optimiser step.
    """
    start = next((m for m in marks if m[1] >= warmup), None)
    if start is None or marks[-1][1] <= start[1]:
        raise ValueError(
            f"no training steps were timed after {warmup} warm-up samples; raise trainer_steps"
        )
    samples = marks[-1][1] - start[1]
    return samples / (marks[-1][0] - start[0]), samples


def _synced_clock(device: torch.device, at: set[int]) -> Callable[[int], float]:
    """A clock that first waits for the device when the samples done are in `at` (the
    warm-up's end and the last step), so that a GPU's queued work is timed, not skipped."""
    def clock(done: int) -> float:
        if done in at and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
    return clock


def _anomdet_train_marks(
    base_model: str, seed: int, split: Split, train: pd.DataFrame, config: TrainConfig,
    warmup: int, progress: StageProgress | None,
) -> list[tuple[float, int]]:
    model, tokenizer = load_base_model(base_model, seed=seed)
    val = split.val.groupby("label", group_keys=False).head(THROUGHPUT_VAL_PER_CLASS)
    marks: list[tuple[float, int]] = []
    clock = _synced_clock(pick_device(), {warmup, len(train)})

    def mark(done: int, total: int) -> None:
        marks.append((clock(done), done))
        if progress:
            progress("training loop: anomdet", done, total)

    fine_tune(model, tokenizer, train["text"].tolist(), train["label"].to_numpy(),
              val["text"].tolist(), val["label"].to_numpy(),
              replace(config, epochs=1, min_steps=1, max_steps=None, evaluations=1),
              progress=mark)
    return marks


def _trainer_marks(
    base_model: str, seed: int, train: pd.DataFrame, max_length: int, batch_size: int,
    warmup: int, progress: StageProgress | None,
) -> list[tuple[float, int]]:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    model, tokenizer = load_base_model(base_model, seed=seed)
    encoded = tokenizer(train["text"].tolist(), truncation=True, max_length=max_length)
    rows = [{**{k: v[i] for k, v in encoded.items()}, "labels": int(label)}
            for i, label in enumerate(train["label"])]
    marks: list[tuple[float, int]] = []
    device = pick_device()
    steps = len(train) // batch_size
    clock = _synced_clock(device, {warmup, steps * batch_size})

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            done = state.global_step * args.train_batch_size
            marks.append((clock(done), done))
            if progress:
                progress("training loop: Trainer", state.global_step, steps)

    with tempfile.TemporaryDirectory() as output_dir:
        # Stock settings but the batch size, and bf16 mixed precision where anomdet trains
        # in it too; tqdm is off only so its bar does not fight the rich display.
        args = TrainingArguments(output_dir=output_dir, max_steps=steps, report_to="none",
                                 seed=seed, disable_tqdm=True,
                                 per_device_train_batch_size=batch_size,
                                 bf16=inference_dtype(describe(device)) == torch.bfloat16)
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          processing_class=tokenizer, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)
        with warnings.catch_warnings():
            # On a CPU the default pin_memory=True only warns; it changes nothing.
            warnings.filterwarnings("ignore", message=".*pin_memory.*")
            trainer.train()
    return marks


def training_throughput(
    split: Split, *, base_model: str, config: TrainConfig, trainer_steps: int, seed: int,
    progress: StageProgress | None = None,
) -> dict[str, float | int]:
    """Samples/s of anomdet's loop and of `transformers.Trainer`, on the same training
    texts, on the same device, at the same batch size.

    Each starts from a fresh copy of the base model and makes one pass over the same
    sample of the train split. The first steps (a tenth, at most `TRAIN_WARMUP_STEPS`)
    are not timed; exactly the same number of samples is.
    """
    batch = config.batch_size
    warmup = max(1, min(TRAIN_WARMUP_STEPS, trainer_steps // 10)) * batch
    size = warmup + trainer_steps * batch
    # Distinct texts only: fine_tune trains on one example per text, Trainer on every row.
    distinct = split.train[~split.train["text"].map(normalise_text).duplicated()]
    if size > len(distinct):
        raise ValueError(f"trainer_steps={trainer_steps} needs {size} distinct training texts "
                         f"but the train split has {len(distinct)}; lower trainer_steps")
    sample = distinct.sample(n=size, random_state=seed).reset_index(drop=True)
    ours, ours_n = _timed_rate(
        _anomdet_train_marks(base_model, seed, split, sample, config, warmup, progress), warmup)
    theirs, theirs_n = _timed_rate(
        _trainer_marks(base_model, seed, sample, config.max_length, batch, warmup, progress),
        warmup)
    if ours_n != theirs_n:
        raise RuntimeError(f"timed {ours_n} samples for anomdet but {theirs_n} for Trainer")
    return {"training_samples_per_s": ours, "trainer_samples_per_s": theirs,
            "training_speedup": ours / theirs, "training_timed_samples": ours_n,
            "trainer_batch_size": batch}


def _pipeline_scores(classifier: Any, texts: Sequence[str], max_length: int,
                     batch_size: int | None = None) -> np.ndarray:
    """`pipeline()`'s anomalous scores: one call per text, or one call over all texts
    in batches of `batch_size`."""
    kwargs = {"truncation": True, "max_length": max_length, "top_k": None}
    if batch_size is None:
        results = [classifier(text, **kwargs) for text in texts]
    else:
        results = classifier(list(texts), batch_size=batch_size, **kwargs)
    return np.array([next(r["score"] for r in result if r["label"] == "anomalous")
                     for result in results])


def _duel(paths: dict[str, Callable[[Sequence[str]], np.ndarray]], texts: Sequence[str],
          repeats: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Texts/s and scores of each path on `texts`: a warm-up call each, then `repeats`
    rounds in which the paths alternate, so that machine load hits all of them alike."""
    seconds, scores = dict.fromkeys(paths, 0.0), {}
    for path in paths.values():
        path(list(texts[:4]))
    for _ in range(repeats):
        for name, path in paths.items():
            start = time.perf_counter()
            scores[name] = path(texts)
            seconds[name] += time.perf_counter() - start
    return {name: repeats * len(texts) / spent for name, spent in seconds.items()}, scores


def _max_diff(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.max(np.abs(first - second)))


def scoring_throughput(
    model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int,
    batch_size: int | None = None, repeats: int = 3, scoring_model: Any = None,
    batch_texts: Sequence[str] | None = None, lexical: LexicalEvidence | None = None,
) -> dict[str, Any]:
    """Texts/s of `predict_scores` against `pipeline()` on the same device and texts.

    The encoder's path is what `pipeline()` can be held to (the same scores); with
    `lexical`, the model's whole score, the n-gram model's evidence blended in, is timed
    beside it (`blended_*`), since that is what a user's scoring run pays.

    Two duels: on `texts`, anomdet against `pipeline()` called one text at a time; on
    `batch_texts` (`texts` when None), anomdet against `pipeline()` over all of them in
    batches of each of `PIPELINE_BATCH_SIZES`, the best of which is the reference.
    `model` is the fine-tuned fp32 model; `scoring_model` is how anomdet scores with it
    (`for_inference`'s copy; `model` itself when None). `pipeline()` runs the scoring
    model too, unless that is an int8 copy, which `pipeline()` does not run: it then
    runs `model`, and anomdet's fp32 path is timed beside it, so the fp32 figure is
    never hidden. Same texts, same truncation; see `_duel` for the rounds.
    """
    from transformers import pipeline

    scoring_model = model if scoring_model is None else scoring_model
    int8 = any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear)
               for m in scoring_model.modules())
    reference = model if int8 else scoring_model
    device = next(reference.parameters()).device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "use a dataset" on a GPU, per text
        classifier = pipeline("text-classification", model=reference, tokenizer=tokenizer,
                              device=device)

        def ours(with_model: Any, evidence: LexicalEvidence | None = None,
                 ) -> Callable[[Sequence[str]], np.ndarray]:
            return lambda batch: predict_scores(with_model, tokenizer, batch,
                                                batch_size=batch_size, max_length=max_length,
                                                lexical=evidence)

        blended = {"blended": ours(scoring_model, lexical)} if lexical is not None else {}
        one = {"ours": ours(scoring_model), **({"fp32": ours(model)} if int8 else {}),
               **blended,
               "pipeline": lambda batch: _pipeline_scores(classifier, batch, max_length)}
        rate, scores = _duel(one, texts, repeats)
        batch_texts = texts if batch_texts is None else batch_texts
        many = {"ours": ours(scoring_model), **blended, **{
            f"pipeline_{size}": (lambda batch, size=size: _pipeline_scores(
                classifier, batch, max_length, size)) for size in PIPELINE_BATCH_SIZES}}
        batched, batched_scores = _duel(many, batch_texts, repeats)
    best = max(PIPELINE_BATCH_SIZES, key=lambda size: batched[f"pipeline_{size}"])
    fp32 = "fp32" if int8 else "ours"
    return {"scoring_texts_per_s": rate["ours"], "pipeline_texts_per_s": rate["pipeline"],
            "scoring_speedup": rate["ours"] / rate["pipeline"],
            "fp32_scoring_texts_per_s": rate[fp32],
            "fp32_scoring_speedup": rate[fp32] / rate["pipeline"],
            "scoring_timed_texts": len(texts),
            # The float path must compute pipeline()'s scores, or the comparison is void;
            # the int8 path's distance from them is the price of its speed.
            "scoring_max_abs_diff": _max_diff(scores[fp32], scores["pipeline"]),
            "int8_max_abs_diff": _max_diff(scores["ours"], scores["pipeline"]) if int8 else None,
            "pipeline_dtype": str(next(reference.parameters()).dtype).removeprefix("torch."),
            "bulk_scoring_texts_per_s": batched["ours"], "bulk_scoring_rows": len(batch_texts),
            "pipeline_batched_texts_per_s": batched[f"pipeline_{best}"],
            "pipeline_best_batch_size": best,
            "pipeline_batched_by_size": {size: batched[f"pipeline_{size}"]
                                         for size in PIPELINE_BATCH_SIZES},
            "batched_scoring_speedup": batched["ours"] / batched[f"pipeline_{best}"],
            "batched_max_abs_diff": _max_diff(batched_scores["ours"],
                                              batched_scores[f"pipeline_{best}"]),
            **({"blended_scoring_texts_per_s": rate["blended"],
                "blended_scoring_speedup": rate["blended"] / rate["pipeline"],
                "blended_bulk_scoring_texts_per_s": batched["blended"],
                "blended_batched_scoring_speedup":
                    batched["blended"] / batched[f"pipeline_{best}"]} if blended else {})}


def _fine_tune(
    split: Split, settings: TrainingSettings, progress: StageProgress | None,
) -> tuple[Challenger, dict[str, Any]]:
    challenger = train_challenger(split, settings, progress=_stage(progress, "fine-tuning"))
    result = challenger.result
    info = {"train_rows": result.train_rows, "truncated": result.truncated,
            "best_epoch": result.best_epoch, "best_val_pr_auc": result.best_val_pr_auc,
            "fine_tune_samples_per_s": result.samples_per_s,
            "fine_tune_seconds": result.seconds, "history": result.history}
    return challenger, info


def _fp32_evaluation(challenger: Challenger, split: Split, settings: TrainingSettings,
                     kwargs: dict[str, Any]) -> EvalResult:
    """The fp32 model on the test split at its own threshold, blended with the n-gram
    model as `train_challenger` would have blended it had it kept fp32."""
    y_val, val = split.val["label"].to_numpy(), challenger.result.val_scores
    lexical = challenger.lexical
    if lexical is not None:
        lexical, val = blend_on_validation(
            lexical.model, y_val, lexical.model.log_odds(split.val["text"].tolist()), val)
    threshold = choose_threshold(y_val, val, target_precision=settings.target_precision)
    return evaluate(challenger.model, challenger.tokenizer, split.test, threshold,
                    lexical=lexical, **kwargs)


def _cycled(texts: Sequence[str], rows: int) -> list[str]:
    """`rows` texts: `texts` repeated as often as needed (a throughput set larger than
    the split; scoring caches nothing, so a repeated text costs what a new one does)."""
    return (list(texts) * math.ceil(rows / len(texts)))[:rows]


def run_benchmark(
    data: Path, *, epochs: int | None = None, max_train_rows: int | None = None,
    min_steps: int | None = None, precision: str = "auto",
    base_model: str = "bundled", seed: int = 42, scoring_rows: int = 2000,
    pipeline_rows: int = 300, trainer_steps: int = 100, repeats: int = 3,
    progress: StageProgress | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark on a labelled CSV and return its figures as a flat dict.

    Quality: the fine-tuned model and the TF-IDF baseline are trained on the same
    train split, thresholded on the same validation split (`choose_threshold`) and measured on
    the same de-duplicated test split. Speed, on the device anomdet picks: see
    `scoring_throughput` (one text at a time on the first `pipeline_rows` test and
    validation texts; batched on `scoring_rows` of them, repeated to that many when
    fewer) and `training_throughput`.
    """
    started = time.perf_counter()
    threads = configure_threads()
    split = load_split(data, seed=seed)
    overrides = {k: v for k, v in (("epochs", epochs), ("min_steps", min_steps))
                 if v is not None}
    settings = TrainingSettings(base_model=base_model, seed=seed, max_train_rows=max_train_rows,
                                inference_precision=precision,
                                **overrides)
    challenger, info = _fine_tune(split, settings, progress)
    model, tokenizer, config = challenger.model, challenger.tokenizer, challenger.config
    kwargs = {"batch_size": config.eval_batch_size, "max_length": config.max_length}
    scoring_model = challenger.scoring_model
    # As in the retrain flow: thresholded on validation in the inference precision.
    ours = evaluate(scoring_model, tokenizer, split.test, challenger.threshold,
                    lexical=challenger.lexical, **kwargs)
    # The fp32 model at its own threshold (the kept epoch's validation scores), to show
    # what the inference precision costs in quality.
    fp32 = ours if scoring_model is model else _fp32_evaluation(challenger, split, settings,
                                                                   kwargs)
    baseline = evaluate_baseline(split, seed=seed, target_precision=settings.target_precision)
    pool = pd.concat([split.test["text"], split.val["text"]]).tolist()
    # How a saved version of this precision scores (load_artifact): on a GPU with bf16, a
    # bf16 copy, made once rather than per call.
    speed_model = for_inference(model, "fp32") if challenger.precision == "fp32" \
        else scoring_model
    if progress:
        progress("scoring duels", 0, 1)
    scoring = scoring_throughput(model, tokenizer, pool[:pipeline_rows], repeats=repeats,
                                 scoring_model=speed_model, lexical=challenger.lexical,
                                 batch_texts=_cycled(pool, scoring_rows), **kwargs)
    if progress:
        progress("scoring duels", 1, 1)
    training = training_throughput(split, base_model=base_model, config=config,
                                   trainer_steps=trainer_steps, seed=seed, progress=progress)
    return {
        "data": str(data), "base_model": base_model, "seed": seed, "threads": threads,
        "rows": sum(split.sizes().values()), "train_rows_split": len(split.train),
        "test_anomalies": int(split.test["label"].sum()), "steps": challenger.result.steps,
        "val_rows": len(split.val), "test_rows": len(split.test),
        "train_test_shared_texts": len(shared_texts(split.train, split.test)),
        "epochs": config.epochs, "batch_size": config.batch_size,
        "learning_rate": config.learning_rate, "max_length": config.max_length,
        "inference_precision": challenger.precision, "val_pr_auc_int8": challenger.val_pr_auc_int8,
        **info, **_figures("", ours),
        "fp32_f1": float(fp32.metrics["f1"]), "fp32_pr_auc": float(fp32.metrics["pr_auc"]),
        **_figures("baseline_", baseline),
        **device_figures(), **scoring, **training, "seconds": time.perf_counter() - started,
    }


class _RichStages:
    """One rich progress bar per stage; a new stage closes the previous bar."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._stage: str | None = None
        self._bar: Progress | None = None
        self._task: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self._console, transient=False)
            self._bar.start()
            self._task = self._bar.add_task(stage, total=total)
            self._stage = stage
        assert self._bar is not None
        self._bar.update(self._task, completed=done, total=total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar, self._stage = None, None


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}"


def results_table(result: dict[str, Any]) -> Table:
    """The headline figures: anomdet against its reference, with the ratio and, for
    speed, the device both ran on."""
    table = Table(title=f"anomdet bench: {result['rows']} rows, test split {result['test_rows']}"
                        f" (de-duplicated), {result['seconds']:.0f} s")
    for column in ("measure", "anomdet", "reference", "reference is", "ratio", "device"):
        table.add_column(column, justify="left" if column in ("measure", "reference is",
                                                              "device") else "right")
    for key in ("f1", "precision", "recall", "pr_auc"):
        ours, theirs = result[key], result[f"baseline_{key}"]
        table.add_row(f"test {key}", _fmt(ours), _fmt(theirs), "TF-IDF + LogReg",
                      _fmt(ours / theirs, 2) if theirs else "-", "")
    precision = result.get("inference_precision", "fp32")
    if precision != "fp32":
        table.add_row("test f1, fp32 model", _fmt(result["fp32_f1"]), _fmt(result["baseline_f1"]),
                      "TF-IDF + LogReg", _fmt(result["fp32_f1"] / result["baseline_f1"], 2), "")
    device = result.get("device", "")
    label = (f"{precision}, bf16 weights" if precision == "fp32"
             and result.get("scoring_dtype") == "bfloat16" else precision)
    one = f"pipeline() per text, {result.get('pipeline_dtype', 'float32')}"
    table.add_row(f"scoring texts/s ({label})", _fmt(result["scoring_texts_per_s"], 1),
                  _fmt(result["pipeline_texts_per_s"], 1), one,
                  _fmt(result["scoring_speedup"], 2), device)
    if precision != "fp32":
        table.add_row("scoring texts/s (fp32)", _fmt(result["fp32_scoring_texts_per_s"], 1),
                      _fmt(result["pipeline_texts_per_s"], 1), one,
                      _fmt(result["fp32_scoring_speedup"], 2), device)
    table.add_row(f"scoring texts/s ({label}), {result['bulk_scoring_rows']} texts",
                  _fmt(result["bulk_scoring_texts_per_s"], 1),
                  _fmt(result["pipeline_batched_texts_per_s"], 1),
                  f"pipeline(), batch_size={result['pipeline_best_batch_size']} (best of "
                  f"{', '.join(map(str, PIPELINE_BATCH_SIZES))})",
                  _fmt(result["batched_scoring_speedup"], 2), device)
    if "blended_scoring_texts_per_s" in result:
        table.add_row(f"scoring texts/s ({label}, with the n-gram evidence)",
                      _fmt(result["blended_scoring_texts_per_s"], 1),
                      _fmt(result["pipeline_texts_per_s"], 1), one,
                      _fmt(result["blended_scoring_speedup"], 2), device)
        table.add_row(f"scoring texts/s ({label}, with the n-gram evidence), "
                      f"{result['bulk_scoring_rows']} texts",
                      _fmt(result["blended_bulk_scoring_texts_per_s"], 1),
                      _fmt(result["pipeline_batched_texts_per_s"], 1),
                      f"pipeline(), batch_size={result['pipeline_best_batch_size']}",
                      _fmt(result["blended_batched_scoring_speedup"], 2), device)
    table.add_row("training samples/s", _fmt(result["training_samples_per_s"], 1),
                  _fmt(result["trainer_samples_per_s"], 1),
                  f"Trainer, batch {result['trainer_batch_size']}",
                  _fmt(result["training_speedup"], 2), device)
    return table


def suite_table(rows: list[dict[str, Any]], seeds: int) -> Table:
    """One row per set: anomdet against the baseline on the same splits, mean ± spread."""
    table = Table(title=f"anomdet bench: quality over {seeds} split seed(s), "
                        "mean ± standard deviation")
    for column in ("set", "rows", "anomalies", "distinct anomalous", "F1", "precision",
                   "recall", "PR-AUC", "baseline F1", "F1 gain", "seeds at or above",
                   "train s"):
        table.add_column(column, justify="left" if column == "set" else "right")
    for row in rows:
        def pm(key: str, r: dict[str, Any] = row) -> str:
            return f"{r[f'{key}_mean']:.3f} ± {r[f'{key}_std']:.3f}"
        table.add_row(row["set"], str(row["rows"]), str(row["anomalies"]),
                      str(row["distinct_anomalous_texts"]), pm("f1"), pm("precision"),
                      pm("recall"), pm("pr_auc"), pm("baseline_f1"),
                      f"{row['f1_gain_mean']:+.3f}",
                      f"{row['seeds_at_or_above']}/{len(row['runs'])}",
                      f"{row['train_seconds_mean']:.0f}")
    return table


def _as_run(result: dict[str, Any]) -> dict[str, Any]:
    """The single-set benchmark's quality figures in the suite's per-seed form."""
    keys = ("f1", "precision", "recall", "pr_auc")
    return {"seed": result["seed"], "test_rows": result["test_rows"],
            "test_anomalies": result.get("test_anomalies"),
            **{k: result[k] for k in keys}, **{f"baseline_{k}": result[f"baseline_{k}"]
                                               for k in keys},
            **{k: result[k] for k in BEST_THRESHOLD_KEYS},
            "train_seconds": result["fine_tune_seconds"], "steps": result.get("steps"),
            "precision_used": result["inference_precision"]}


def select_sets(available: list[BenchSet], names: str) -> list[BenchSet]:
    """The sets a comma-separated `--sets` names, in the order it names them, so that a
    long run can start with the set whose figure is wanted first."""
    by_name = {b.name: b for b in available}
    wanted = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
    unknown = [n for n in wanted if n not in by_name]
    if unknown or not wanted:
        raise ValueError(f"--sets names unknown set(s) {', '.join(unknown) or repr(names)}; "
                         f"the suite has {', '.join(by_name)}")
    return [by_name[n] for n in wanted]


def bench_command(
    data: list[Path] = typer.Option(None, "--data", exists=True, dir_okay=False,
                                    help="labelled CSV with columns id,text,label; repeat it "
                                         "for several sets"),
    suite: bool = typer.Option(False, "--suite", help="run the default suite of regimes "
                                                      "(built from --data-dir)"),
    data_dir: Path = typer.Option(Path("../shared/data"), "--data-dir", file_okay=False,
                                  help="where the suite's sms_spam.csv and davidson_hate.csv are"),
    sets: str | None = typer.Option(None, "--sets",
                                    help="with --suite: a comma-separated subset of its sets, "
                                         "run in that order"),
    seeds: int = typer.Option(3, "--seeds", min=1, help="split seeds per set (42, 43, ...)"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the figures here"),
    epochs: int | None = typer.Option(None, min=1, help="fine-tuning epochs (default: settings)"),
    min_steps: int | None = typer.Option(None, min=1,
                                         help="floor of the step schedule (default: settings)"),
    max_train_rows: int | None = typer.Option(None, min=10, help="cap on training rows"),
    precision: str = typer.Option(
        "auto", help="inference precision: auto (int8 unless it costs validation PR-AUC or F1), "
                     "int8 or fp32"),
    base_model: str = typer.Option("bundled", help="'bundled', 'tiny-random' or a local dir"),
    seed: int = typer.Option(42, help="seed for the split, the models and the samples"),
    scoring_rows: int = typer.Option(2000, min=1, help="texts in the bulk scoring run"),
    pipeline_rows: int = typer.Option(300, min=1,
                                      help="texts scored by both anomdet and pipeline()"),
    trainer_steps: int = typer.Option(100, min=1, help="timed transformers.Trainer steps"),
    repeats: int = typer.Option(3, min=1, help="alternating rounds of the scoring duel"),
) -> None:
    """Measure quality against a TF-IDF baseline and speed against stock transformers.

    One --data: quality and speed at --seed, then quality at further split seeds.
    Several --data or --suite: quality only, one row per set over --seeds split seeds.
    """
    from transformers.utils import logging as hf_logging

    quiet_transformers()
    hf_logging.disable_progress_bar()  # the rich bars below report progress instead
    console = report_console()
    stages = _RichStages(console)
    overrides = {k: v for k, v in (("epochs", epochs), ("max_train_rows", max_train_rows),
                                   ("inference_precision", precision), ("min_steps", min_steps))
                 if v is not None}
    try:
        chosen = [BenchSet(p.stem, "given with --data", lambda p=p: read_labelled_csv(p))
                  for p in data or []]
        if suite:
            chosen += default_suite(data_dir)
            if sets:
                chosen = select_sets(chosen, sets)
        if not chosen:
            raise ValueError("give a labelled CSV with --data FILE, or --suite")
        result: dict[str, Any] = {}
        if len(chosen) == 1 and not suite:
            result = run_benchmark(data[0], epochs=epochs, max_train_rows=max_train_rows,
                                   min_steps=min_steps,
                                   precision=precision, base_model=base_model, seed=seed,
                                   scoring_rows=scoring_rows, pipeline_rows=pipeline_rows,
                                   trainer_steps=trainer_steps, repeats=repeats,
                                   progress=stages)
            stages.close()
            console.print(results_table(result))
            more = run_suite(chosen, seeds=seeds - 1, first_seed=seed + 1, base_model=base_model,
                             overrides=overrides, progress=stages) if seeds > 1 else None
            runs = [_as_run(result)] + (more[0]["runs"] if more else [])
            rows = [summarise(chosen[0].name, chosen[0].regime, chosen[0].load(), runs)]
        else:
            def keep(rows_so_far: list[dict[str, Any]]) -> None:
                if json_out is not None:
                    json_out.write_text(json.dumps({"seeds": seeds, "suite": rows_so_far},
                                                   indent=2, default=float) + "\n")

            rows = run_suite(chosen, seeds=seeds, first_seed=seed, base_model=base_model,
                             overrides=overrides, progress=stages, on_row=keep)
    except ValueError as exc:
        stages.close()
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    stages.close()
    console.print(suite_table(rows, seeds))
    if json_out is not None:
        payload = {**result, "seeds": seeds, "suite": rows}
        json_out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
        console.print(f"figures written to {json_out}")


if __name__ == "__main__":
    typer.run(bench_command)
