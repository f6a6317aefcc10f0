"""The domain's config objects as the settings build them, with a test's own changes.

The config objects have no defaults of their own: a test starts from the settings'
defaults and changes only what it is about, so it follows the settings when they move.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from anomdet.settings import (
    DriftSettings,
    PromotionSettings,
    RecordsSettings,
    TrainingSettings,
    ValidationSettings,
)

if TYPE_CHECKING:
    from anomdet.drift import DriftBounds
    from anomdet.finetune import TrainConfig
    from anomdet.promotion import PromotionPolicy
    from anomdet.validation import ValidationConfig
    from db.records import RecordsMapping


def train_config(**changes: Any) -> TrainConfig:
    """The default training settings' `TrainConfig`, with `changes`."""
    # Imported here: the training module loads torch, which the other configs do not need.
    from anomdet.training import train_config as from_settings

    return replace(from_settings(TrainingSettings()), **changes)


def promotion_policy(**changes: Any) -> PromotionPolicy:
    """The default promotion settings' policy, with `changes` (checked by the policy)."""
    return replace(PromotionSettings().policy(), **changes)


def validation_config(**changes: Any) -> ValidationConfig:
    """The default validation settings' config, with `changes` (checked by the config)."""
    return replace(ValidationSettings().config(), **changes)


def drift_bounds(**changes: Any) -> DriftBounds:
    """The default drift settings' bounds, with `changes` (checked by the bounds)."""
    return replace(DriftSettings().bounds(), **changes)


def records_mapping(**changes: Any) -> RecordsMapping:
    """The default records settings' mapping, with `changes` (checked by the mapping)."""
    return replace(RecordsSettings().mapping(), **changes)
