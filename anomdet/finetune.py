"""Fine-tuning: the hyperparameters, the training loop with its validation checks, and
the head's start as a linear probe."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, log_loss
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from anomdet.batching import (
    BalancedBatches,
    device_batches,
    distinct_texts,
    encode,
    host_batch,
    model_budget,
    to_device,
    token_budget_batches,
)
from anomdet.device import pick_device
from anomdet.encoder import MeanPooledBertForSequenceClassification
from anomdet.inference import Progress, autocast, scores_from_ids

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning hyperparameters, built by `anomdet.training.train_config` from the
    training settings, which hold the defaults and their reasons.

    The schedule is counted in optimizer steps: `epochs` passes over the distinct
    training texts, but never fewer than `min_steps` nor more than `max_steps`.
    """

    epochs: int
    batch_size: int
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    max_length: int
    patience: int
    seed: int
    eval_batch_size: int | None
    min_steps: int
    max_steps: int | None
    evaluations: int
    anomaly_share: float
    probe_head: bool
    plentiful_anomalies: int | None
    eval_batch_tokens: int | None

    def total_steps(self, train_rows: int) -> int:
        """Optimizer steps for `train_rows` distinct training texts."""
        steps = self.epochs * math.ceil(train_rows / self.batch_size)
        steps = max(steps, self.min_steps)
        return min(steps, self.max_steps) if self.max_steps else steps


@dataclass
class TrainResult:
    """What fine-tuning did: the best check, its validation scores, and throughput.

    `best_epoch` counts validation checks (1-based); `history` has one entry per check
    with the step, the epochs it amounts to, the training loss and validation PR-AUC.
    """

    best_epoch: int
    best_val_pr_auc: float
    val_scores: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    train_rows: int = 0
    truncated: int = 0
    samples_per_s: float = 0.0
    seconds: float = 0.0
    steps: int = 0


# The probe reads at most this many texts: every anomaly (up to half) and a sample of the
# rest. It costs one forward pass over them, a few seconds for a thousand short texts.
PROBE_ROWS = 4096


def probe_head(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
               ids: list[list[int]], labels: np.ndarray, config: TrainConfig,
               rng: np.random.Generator) -> bool:
    """Start the head as a logistic regression on the pre-trained encoder's features.

    From a random head, the first steps' gradients mostly repair the head and, on the
    way, pull the encoder's features towards the few training texts; the fine-tuned
    model then fails on texts unlike them (Kumar et al., ICLR 2022, "Fine-Tuning can
    Distort Pretrained Features and Underperform Out-of-Distribution"). With the head
    fitted first on the frozen features (linear probing, then fine-tuning), training
    starts from a model that already ranks well and moves the encoder less. On log
    lines whose test anomalies were texts training never saw, this took F1 from 0 to
    the baseline's level and above. Only the mean-pooled head of anomdet.encoder is
    probed (it needs the features the head reads); others keep their random start.
    sklearn fits the regression; its scaling is folded into the head's weights.
    """
    if not isinstance(model, MeanPooledBertForSequenceClassification):
        logger.info("the %s head reads features the probe cannot reach: it starts random",
                    type(model).__name__)
        return False
    from sklearn.linear_model import LogisticRegression

    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    pos = pos if len(pos) <= PROBE_ROWS // 2 else rng.choice(pos, PROBE_ROWS // 2, replace=False)
    room = PROBE_ROWS - len(pos)
    neg = neg if len(neg) <= room else rng.choice(neg, room, replace=False)
    pick = np.concatenate([pos, neg])
    device = next(model.parameters()).device
    features = np.empty((len(pick), model.config.hidden_size), dtype=np.float64)
    budget = model_budget(model, device, tokens=config.eval_batch_tokens,
                          rows=config.eval_batch_size)
    batches = token_budget_batches([len(ids[i]) for i in pick], budget.rows, budget.tokens)
    picked = [ids[i] for i in pick]
    model.eval()
    with torch.inference_mode(), autocast(device):
        pooled = [model.pooled(**batch).float() for batch in
                  device_batches(tokenizer, picked, batches, device)]
    if batches:
        features[np.concatenate(batches)] = torch.cat(pooled).cpu().numpy()
    # One scale for all features, not one per feature: some of the encoder's dimensions
    # barely vary, and dividing by their spread gives them weights that dropout, which
    # zeroes features at random in training, turns into huge swings of the logits.
    centre, spread = features.mean(axis=0), float(features.std(axis=0).mean()) or 1.0
    regression = LogisticRegression(class_weight="balanced", max_iter=2000)
    regression.fit((features - centre) / spread, labels[pick])
    weight = regression.coef_[0] / spread
    bias = regression.intercept_[0] - float(weight @ centre)
    # Two logits whose difference is the regression's log-odds.
    with torch.no_grad():
        head = model.classifier
        head.weight.copy_(torch.as_tensor(np.stack([-weight, weight]) / 2, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor([-bias / 2, bias / 2], dtype=head.bias.dtype))
    logger.info("head started as a logistic regression on the encoder's features of %d texts",
                len(pick))
    return True


def _optimizer(model: PreTrainedModel, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all tensors in one pass: several times faster than
    # the per-tensor loop on a CPU, where the step is a third of a small model's step time.
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=True)


def _train_step(model: PreTrainedModel, batch: dict[str, torch.Tensor], target: torch.Tensor,
                optimizer: torch.optim.Optimizer, scheduler: Any,
                max_grad_norm: float) -> torch.Tensor:
    """One optimiser step; the loss stays on the device (reading it would wait for a GPU)."""
    device = target.device
    with autocast(device):
        logits = model(**batch).logits
    loss = torch.nn.functional.cross_entropy(logits.float(), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # Clipping keeps the norm on the device; only error_if_nonfinite would wait for it.
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    return loss.detach()


def _training_batch(tokenizer: PreTrainedTokenizerBase, ids: list[list[int]],
                    labels: np.ndarray, index: np.ndarray,
                    device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One training batch and its targets on `device`, copied without waiting for it."""
    pin = device.type == "cuda"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = host_batch(ids, index, pad_id, pin=pin,
                       left=getattr(tokenizer, "padding_side", "right") == "left")
    target = torch.as_tensor(labels[index], dtype=torch.long)
    return to_device(batch, device), to_device({"y": target.pin_memory() if pin
                                                  else target}, device)["y"]


def _mean_loss(losses: list[torch.Tensor]) -> float:
    """The mean of the steps' losses, read from the device once."""
    return float(torch.stack(losses).float().mean()) if losses else math.nan


def _drain(device: torch.device) -> float:
    """Seconds spent waiting for the device to finish the work queued so far."""
    if device.type != "cuda":
        return 0.0
    start = time.perf_counter()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


@dataclass
class _Best:
    """The best validation check so far: PR-AUC first, then validation log-loss."""

    pr_auc: float = -1.0
    loss: float = math.inf
    check: int = 0
    state: dict[str, torch.Tensor] | None = None
    scores: np.ndarray | None = None

    def offer(self, check: int, pr_auc: float, loss: float, model: PreTrainedModel,
              scores: np.ndarray) -> bool:
        # PR-AUC saturates at 1.0 on easy data; the log-loss then tells the better fit.
        if (pr_auc, -loss) <= (self.pr_auc, -self.loss):
            return False
        self.pr_auc, self.loss, self.check, self.scores = pr_auc, loss, check, scores
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True


#: Fine-tuning stops at a check that ranks every validation anomaly above every normal
#: text (PR-AUC 1.0, which no later check can beat) when there are at least this many
#: anomalies: a perfect ranking of so many is no accident of a small split, while on a
#: handful of validation anomalies it comes early and cheaply, and the steps that follow
#: still teach the model what the test split holds.
PERFECT_RANKING_MIN_ANOMALIES = 30


def _ranks_perfectly(pr_auc: float, y_val: np.ndarray) -> bool:
    return pr_auc >= 1.0 and int(y_val.sum()) >= PERFECT_RANKING_MIN_ANOMALIES


#: Fine-tuning logs its progress at least this often, so that a run's logs show it is
#: alive and when it should end: validation checks log too, but can be minutes apart.
PROGRESS_LOG_SECONDS = 30.0


def _log_progress(step: int, steps: int, loss: float, epochs: float, rate: float,
                  seconds_left: float) -> None:
    minutes, seconds = divmod(int(seconds_left), 60)
    logger.info("step %d/%d (%.1f epochs): train loss %.4f, %.0f samples/s, about %dm%02ds "
                "left", step, steps, epochs, loss, rate, minutes, seconds)


def fine_tune(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    train_texts: Sequence[str], train_labels: Sequence[int],
    val_texts: Sequence[str], val_labels: Sequence[int],
    config: TrainConfig, *, progress: Progress | None = None,
) -> TrainResult:
    """Fine-tune in place and keep the weights of the best validation check.

    One example per distinct text; balanced batches (see `BalancedBatches`); a schedule
    in optimizer steps (`TrainConfig.total_steps`) with linear warm-up and decay; AdamW
    with gradient clipping; `config.evaluations` validation checks spread over the
    schedule, stopping after `patience` checks without a better one, or at a check that
    ranks enough validation anomalies perfectly (`PERFECT_RANKING_MIN_ANOMALIES`). All
    seeded.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = pick_device()
    model.to(device)
    texts, y_train = distinct_texts(train_texts, train_labels)
    y_val = np.asarray(val_labels, dtype=np.int64)
    ids, truncated = encode(tokenizer, texts, config.max_length)
    val_ids, val_truncated = encode(tokenizer, val_texts, config.max_length)
    if truncated or val_truncated:
        logger.info("%d of %d texts were longer than max_length=%d word pieces and were cut",
                    truncated + val_truncated, len(ids) + len(val_ids), config.max_length)
    batches = BalancedBatches(y_train, [len(x) for x in ids], config.batch_size,
                              config.anomaly_share, rng, plentiful=config.plentiful_anomalies)
    steps = config.total_steps(len(ids))
    checks = sorted({max(1, round(steps * (i + 1) / config.evaluations))
                     for i in range(config.evaluations)})
    logger.info("fine-tuning on %d distinct texts (%d anomalous, %d per batch of %d): "
                "%d steps, about %.1f epochs, %d validation checks", len(ids), int(y_train.sum()),
                batches.per_batch[1], config.batch_size, steps,
                steps * config.batch_size / len(ids), len(checks))
    best, history, losses, stale = _Best(), [], [], 0
    if config.probe_head and probe_head(model, tokenizer, ids, y_train, config, rng):
        # The probed start is a candidate like any check: fine-tuning must beat it.
        scores = scores_from_ids(model, tokenizer, val_ids, config.eval_batch_size,
                                  max_tokens=config.eval_batch_tokens)
        best.offer(0, float(average_precision_score(y_val, scores)),
                   float(log_loss(y_val, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1])),
                   model, scores)
        logger.info("probed head: validation PR-AUC %.4f", best.pr_auc)
    optimizer = _optimizer(model, config)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)
    started, train_seconds, seen = time.perf_counter(), 0.0, 0
    loop_started = logged = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        tick = time.perf_counter()
        index = batches.next()
        batch, target = _training_batch(tokenizer, ids, y_train, index, device)
        losses.append(_train_step(model, batch, target, optimizer, scheduler,
                                  config.max_grad_norm))
        # A GPU runs behind the host: the time it still needs is counted when it is
        # waited for, before a validation check and at the end.
        train_seconds += time.perf_counter() - tick
        if step in checks or step == steps:
            train_seconds += _drain(device)
        seen += len(index)
        if progress:
            progress(seen, steps * config.batch_size)
        if time.perf_counter() - logged >= PROGRESS_LOG_SECONDS:
            logged = time.perf_counter()
            _log_progress(step, steps, _mean_loss(losses), seen / len(ids),
                          seen / train_seconds, (logged - loop_started) / step * (steps - step))
        if step not in checks:
            continue
        scores = scores_from_ids(model, tokenizer, val_ids, config.eval_batch_size,
                                  max_tokens=config.eval_batch_tokens)
        model.train()
        pr_auc = float(average_precision_score(y_val, scores))
        val_loss = float(log_loss(y_val, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1]))
        history.append({"epoch": len(history) + 1, "step": step,
                        "epochs_seen": round(seen / len(ids), 2),
                        "train_loss": _mean_loss(losses), "val_loss": val_loss,
                        "val_pr_auc": pr_auc, "samples_per_s": seen / train_seconds})
        losses.clear()
        logger.info("step %d/%d (%.1f epochs): train loss %.4f, validation loss %.4f, "
                    "PR-AUC %.4f, %.0f samples/s", step, steps, seen / len(ids),
                    history[-1]["train_loss"], val_loss, pr_auc, seen / train_seconds)
        stale = 0 if best.offer(len(history), pr_auc, val_loss, model, scores) else stale + 1
        if _ranks_perfectly(pr_auc, y_val):
            logger.info("validation PR-AUC is 1.0 over %d anomalies, the most it can be: "
                        "stopping at step %d", int(y_val.sum()), step)
            break
        if stale >= config.patience:
            logger.info("no better validation check for %d checks: stopping at step %d",
                        stale, step)
            break
    model.load_state_dict(best.state)
    model.eval()
    return TrainResult(
        best_epoch=best.check, best_val_pr_auc=best.pr_auc, val_scores=best.scores,
        history=history, train_rows=len(ids), truncated=truncated + val_truncated,
        samples_per_s=seen / train_seconds if train_seconds else 0.0,
        seconds=time.perf_counter() - started, steps=step,
    )
