"""The flows' parameters: flat, typed and described, so that a deployment's custom-run form
shows each one, and the server refuses a value the settings would refuse.

Every parameter left empty (None) takes the configured setting: the worker's ANOMDET_*
environment, not the values of the machine that deployed. The bounds come from the
settings' own fields, which stay their one home.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel

from anomdet.settings import Settings, TrainingSettings


def _optional_like(model: type[BaseModel], name: str, kind: Any) -> Any:
    """`kind | None`, with the bounds and pattern of `model`'s field `name`."""
    return Annotated[kind | None, *model.model_fields[name].metadata]


#: ANOMDET_MODEL_NAME: which model a run trains or scores, with its champion and artifacts.
ModelName = _optional_like(Settings, "model_name", str)
Epochs = _optional_like(TrainingSettings, "epochs", int)
MaxTrainRows = _optional_like(TrainingSettings, "max_train_rows", int)
LearningRate = _optional_like(TrainingSettings, "learning_rate", float)


def settings_for(model_name: str | None) -> Settings:
    """The configured settings, for `model_name` when the run names one."""
    return Settings(model_name=model_name) if model_name else Settings()
