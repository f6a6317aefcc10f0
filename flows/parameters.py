"""The flows' parameters: flat, typed and described, so that a deployment's custom-run form
shows each one, and the server refuses a value the settings would refuse.

Every parameter left empty (None) takes the configured setting: the worker's ANOMDET_*
environment, not the values of the machine that deployed. The bounds come from the
settings' own fields, which stay their one home.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, WithJsonSchema

from anomdet.settings import Settings, TrainingSettings


def _optional(kind: Any, *bounds: Any) -> Any:
    """`kind | None` within `bounds`, shown in the form as a plain `kind` field: left
    empty, the parameter is not sent and the flow takes the setting. (As `kind | None`
    the form would show each field set to None, to be switched to its type first.)"""
    shown = TypeAdapter(Annotated[kind, *bounds] if bounds else kind).json_schema()
    return Annotated[kind | None, *bounds, WithJsonSchema(shown)]


def _like(model: type[BaseModel], name: str, kind: Any) -> Any:
    """An optional parameter with the bounds and pattern of `model`'s field `name`."""
    return _optional(kind, *model.model_fields[name].metadata)


#: ANOMDET_MODEL_NAME: which model a run trains or scores, with its champion and artifacts.
ModelName = _like(Settings, "model_name", str)
BaseModelName = _optional(str)
Seed = _optional(int)
Epochs = _like(TrainingSettings, "epochs", int)
MaxTrainRows = _like(TrainingSettings, "max_train_rows", int)
LearningRate = _like(TrainingSettings, "learning_rate", float)


def settings_for(model_name: str | None) -> Settings:
    """The configured settings, for `model_name` when the run names one (a form's empty
    text counts as none)."""
    return Settings(model_name=model_name) if model_name else Settings()
