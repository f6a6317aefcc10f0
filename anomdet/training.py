"""Train a challenger and evaluate models on the shared test split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anomdet.data import Split
from anomdet.metrics import choose_threshold, classification_metrics
from anomdet.model import (
    Progress,
    TrainConfig,
    TrainResult,
    configure_threads,
    fine_tune,
    load_base_model,
    predict_scores,
)
from anomdet.promotion import EvalResult
from anomdet.settings import TrainingSettings

logger = logging.getLogger(__name__)


def base_vocab(spec: str) -> frozenset[str]:
    """The word-piece vocabulary of a base model's tokenizer (for drift figures)."""
    from transformers import AutoTokenizer

    from anomdet.model import BUNDLED, TINY_RANDOM, bundled_model_dir

    source = bundled_model_dir() if spec in (BUNDLED, TINY_RANDOM) else spec
    return frozenset(AutoTokenizer.from_pretrained(source).get_vocab())


def train_config(settings: TrainingSettings) -> TrainConfig:
    """The model layer's config from the user's training settings."""
    return TrainConfig(
        epochs=settings.epochs, batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, warmup_ratio=settings.warmup_ratio,
        weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm,
        max_length=settings.max_length, patience=settings.patience, seed=settings.seed,
        eval_batch_size=settings.eval_batch_size,
    )


@dataclass
class Challenger:
    """A freshly fine-tuned model with the threshold chosen on validation."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    threshold: float
    config: TrainConfig
    base_model: str
    result: TrainResult

    def hyperparameters(self) -> dict[str, Any]:
        return {**self.config.__dict__, "base_model": self.base_model,
                "best_epoch": self.result.best_epoch, "train_rows": self.result.train_rows,
                "truncated_texts": self.result.truncated}


def _cap_rows(train: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    if max_rows is None or len(train) <= max_rows:
        return train
    # Keep every anomaly we can: they are the scarce class.
    positives = train[train["label"] == 1]
    keep_pos = positives.sample(min(len(positives), max_rows // 2), random_state=seed)
    negatives = train[train["label"] == 0]
    keep_neg = negatives.sample(min(len(negatives), max_rows - len(keep_pos)), random_state=seed)
    return pd.concat([keep_pos, keep_neg]).sort_values("id").reset_index(drop=True)


def train_challenger(
    split: Split, settings: TrainingSettings, *, progress: Progress | None = None
) -> Challenger:
    """Fine-tune the base model on the train split; choose the threshold on validation."""
    configure_threads()
    config = train_config(settings)
    model, tokenizer = load_base_model(settings.base_model, seed=settings.seed)
    train = _cap_rows(split.train, settings.max_train_rows, settings.seed)
    result = fine_tune(
        model, tokenizer, train["text"].tolist(), train["label"].to_numpy(),
        split.val["text"].tolist(), split.val["label"].to_numpy(), config, progress=progress,
    )
    threshold = choose_threshold(split.val["label"].to_numpy(), result.val_scores,
                                 target_precision=settings.target_precision)
    logger.info("challenger: best epoch %d, validation PR-AUC %.4f, threshold %.4f",
                result.best_epoch, result.best_val_pr_auc, threshold)
    return Challenger(model=model, tokenizer=tokenizer, threshold=threshold, config=config,
                      base_model=settings.base_model, result=result)


def evaluate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, test: pd.DataFrame,
    threshold: float, *, max_length: int, batch_size: int = 64,
) -> EvalResult:
    """Scores and metrics of one model on the test split, at its own threshold."""
    labels = test["label"].to_numpy(dtype=np.int64)
    scores = predict_scores(model, tokenizer, test["text"].tolist(), batch_size=batch_size,
                            max_length=max_length)
    metrics = classification_metrics(labels, scores, threshold)
    return EvalResult(metrics=metrics, labels=labels, scores=scores, threshold=threshold)
