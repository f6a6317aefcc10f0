"""A trained challenger kept on disk until its run reaches a decision.

A run that fails or is killed after fine-tuning (a lost database connection while
promoting, a timeout, a restarted worker) leaves its challenger here; the next run on
the same data with the same training settings, a retry, picks it up instead of
training again. The key is what a cache key would be: the exact train and validation
rows, the training settings and the anomdet version.

Prefect's result persistence would do this by pickling the task's return value, and
loading a pickle runs whatever code it names: anomdet loads weights from safetensors
only. So the checkpoint is a model artifact like a champion's (safetensors weights, a
manifest of checksums verified on load), plus the challenger's threshold, precision,
training history and validation scores as JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from anomdet.artifact import is_disk_full, load_artifact, save_artifact
from anomdet.data import Split, fingerprint
from anomdet.finetune import TrainConfig, TrainResult
from anomdet.inference import Progress, for_inference
from anomdet.settings import TrainingSettings
from anomdet.training import Challenger, train_challenger

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


def _anomdet_version() -> str:
    try:
        return version("anomdet")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def challenger_key(split: Split, settings: TrainingSettings) -> str:
    """SHA-256 naming the challenger that these rows and settings train."""
    identity = {"train": fingerprint(split.train), "validation": fingerprint(split.val),
                "settings": settings.model_dump(mode="json"), "anomdet": _anomdet_version()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def checkpoint_dir(model_root: Path, key: str) -> Path:
    """Where the challenger of `key` is kept, under the model's artifact folder."""
    return model_root / CHECKPOINTS / key


def save_checkpoint(challenger: Challenger, directory: Path) -> None:
    """Keep `challenger` at `directory`, dropping the model's older checkpoints: they were
    trained on other data or settings, and no retry will ask for them."""
    for stale in directory.parent.glob("*"):
        if stale.name != directory.name:
            shutil.rmtree(stale, ignore_errors=True)
    if directory.exists():  # a run that trained the same challenger meanwhile
        return
    result = asdict(challenger.result)
    result["val_scores"] = challenger.result.val_scores.tolist()
    meta = {"threshold": challenger.threshold, "precision": "fp32",
            "max_length": challenger.config.max_length,
            "challenger": {"config": asdict(challenger.config), "result": result,
                           "base_model": challenger.base_model,
                           "precision": challenger.precision,
                           "val_scores": challenger.val_scores.tolist(),
                           "val_pr_auc_int8": challenger.val_pr_auc_int8,
                           "val_f1_fp32": challenger.val_f1_fp32,
                           "val_f1_int8": challenger.val_f1_int8}}
    try:
        save_artifact(challenger.model, challenger.tokenizer, directory, meta,
                      lexical=challenger.lexical)
    except Exception as exc:
        # safetensors reports a full disk as its own error type, neither OSError nor
        # ValueError: without it, a disk with room for the artifact but not for this
        # copy too failed the run with the raw error instead of going on.
        if not (isinstance(exc, OSError | ValueError) or is_disk_full(exc)):
            raise
        # Only a retry would have used it: the run itself goes on.
        logger.warning("the challenger was not kept for a retry (%s): %s", directory, exc)


def load_checkpoint(directory: Path) -> Challenger | None:
    """The challenger kept at `directory`, or None when there is none or it does not
    verify (a half-written or altered checkpoint is removed, and the run trains)."""
    if not directory.is_dir():
        return None
    try:
        loaded = load_artifact(directory)
        kept = loaded.meta["challenger"]
        result = dict(kept["result"])
        result["val_scores"] = np.asarray(result["val_scores"], dtype=np.float64)
        challenger = Challenger(
            model=loaded.model, tokenizer=loaded.tokenizer, threshold=loaded.threshold,
            config=TrainConfig(**kept["config"]), base_model=kept["base_model"],
            result=TrainResult(**result), precision=kept["precision"],
            scoring_model=for_inference(loaded.model, kept["precision"]),
            val_scores=np.asarray(kept["val_scores"], dtype=np.float64), lexical=loaded.lexical,
            val_pr_auc_int8=kept["val_pr_auc_int8"],
            val_f1_fp32=kept.get("val_f1_fp32"), val_f1_int8=kept.get("val_f1_int8"))
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("the kept challenger at %s cannot be used, training again: %s",
                       directory, exc)
        discard_checkpoint(directory)
        return None
    logger.info("reusing the challenger already trained on these rows with these settings "
                "(%d steps, validation PR-AUC %.4f, threshold %.4f): no fine-tuning",
                challenger.result.steps, challenger.result.best_val_pr_auc,
                challenger.threshold)
    return challenger


def discard_checkpoint(directory: Path | None) -> None:
    """Remove a checkpoint once its run has decided: promoted, it lives on as the
    champion's artifact; rejected, nobody retries a run that ended."""
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def train_or_reuse(split: Split, settings: TrainingSettings, model_root: Path, *,
                   make_progress: Callable[[], Progress] | None = None) -> Challenger:
    """The challenger these rows and settings train: the one an earlier run kept, or a
    newly trained one, kept until its run decides. Either way `checkpoint` says where.
    `make_progress` is called only when training starts."""
    directory = checkpoint_dir(model_root, challenger_key(split, settings))
    challenger = load_checkpoint(directory)
    if challenger is None:
        progress = make_progress() if make_progress else None
        challenger = train_challenger(split, settings, progress=progress)
        save_checkpoint(challenger, directory)
    challenger.checkpoint = directory
    return challenger
