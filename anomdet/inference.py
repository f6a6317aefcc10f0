"""Scoring: a model in the precision it scores in, and the probability that each text
is anomalous."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.special import expit
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anomdet.batching import device_batches, encode, model_budget, token_budget_batches
from anomdet.device import DeviceProfile, attention_kernels, describe, inference_dtype

if TYPE_CHECKING:
    from anomdet.lexical import LexicalEvidence

# How a model scores. "int8": its Linear layers dynamically quantised (int8 weights,
# activations quantised per batch), which on an AVX2 CPU scored short texts about twice
# as fast as fp32 (`anomdet bench` prints both). "fp32": the full-precision weights, which
# on a GPU with bf16 support score as a bf16 copy (see anomdet.device.inference_dtype).
# A version is evaluated, thresholded and used for scoring in the same precision, which
# its artifact records.
PRECISIONS = ("fp32", "int8")

# Called with how many texts are done and how many there are in all.
Progress = Callable[[int, int], None]


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


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 autocast on a GPU that has bf16, and attention kernels that suit dynamic
    padding (see anomdet.device.attention_backends)."""
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16), \
            attention_kernels(DeviceProfile(device.type, str(device))):
        yield


def scores_from_ids(
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
    with torch.inference_mode(), autocast(device):
        for index, batch in zip(batches, device_batches(tokenizer, ids, batches, device),
                                strict=True):
            logits = model(**batch).logits.float()
            # Kept on the device: reading each batch's scores would wait for the GPU. The
            # log-odds, not a float32 softmax, which rounds every confident anomaly to 1.0
            # and so ties them (the blend with the n-gram model reads the log-odds).
            probabilities.append(logits[:, 1] - logits[:, 0])
            done += len(index)
            if progress:
                progress(done, len(ids))
    scores = np.empty(len(ids), dtype=np.float64)
    if batches:
        scores[np.concatenate(batches)] = torch.cat(probabilities).cpu().numpy()
    return expit(scores)


def predict_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *,
    batch_size: int | None = None, max_length: int = 128, progress: Progress | None = None,
    max_tokens: int | None = None, lexical: LexicalEvidence | None = None,
) -> np.ndarray:
    """Probability of `anomalous` per text, in input order: the encoder's, blended with the
    n-gram model's where the model carries `lexical` evidence.

    Texts are tokenised once (in parallel), sorted by length and batched with dynamic
    padding, which on a CPU is several times faster than one text at a time or fixed
    padding. Batches hold at most `batch_size` texts and `max_tokens` padded tokens,
    each the device's figure when None (see anomdet.device.batch_budget).
    """
    if len(texts) == 0:
        return np.empty(0, dtype=np.float64)
    ids, _ = encode(tokenizer, texts, max_length)
    scores = scores_from_ids(model, tokenizer, ids, batch_size, progress, max_tokens=max_tokens)
    return scores if lexical is None else lexical.combine(list(texts), scores)
