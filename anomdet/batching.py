"""Texts to model inputs: tokenisation, batches sized to a token budget, padding on the
host and copies to the device, and the balanced batches fine-tuning draws."""

from __future__ import annotations

import math
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anomdet.device import CPU_BATCH_TOKENS, BatchBudget, batch_budget, describe, host_threads

# Texts are tokenised in chunks of this many on parallel threads (the Rust tokenizer
# releases the GIL); fewer texts are tokenised in one call.
TOKENIZE_CHUNK = 1024


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


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
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


def device_batches(
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
        yield to_device(batch, device)


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
