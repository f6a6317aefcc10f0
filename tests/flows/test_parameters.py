"""The flows' parameters as the custom-run form and the server see them: flat, typed,
described, bounded by the settings' own fields, and empty meaning the setting."""

from __future__ import annotations

import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import ValidationError, validate

from flows.parameters import settings_for


def _schema(flow: object) -> dict:
    return parameter_schema(flow).model_dump()


def test_retrain_takes_flat_described_parameters_bounded_as_the_settings() -> None:
    from flows.retrain import retrain

    schema = _schema(retrain)
    fields = schema["properties"]
    assert list(fields) == ["model_name", "base_model", "epochs", "seed", "max_train_rows",
                            "learning_rate"]
    # One plain field each, no `int | None` choice to make first; empty: the setting.
    assert all("anyOf" not in field and field["default"] is None for field in fields.values())
    assert all("ANOMDET_" in field["description"] for field in fields.values())
    assert (fields["epochs"]["minimum"], fields["epochs"]["maximum"]) == (1, 100)
    assert fields["max_train_rows"]["minimum"] == 10
    assert fields["model_name"]["pattern"] == "^[A-Za-z0-9_.-]{1,100}$"
    assert schema.get("required", []) == []
    # The server's check, as a deployment with enforce_parameter_schema runs it.
    validate({"epochs": 2, "model_name": "fraud"}, schema, raise_on_error=True)
    with pytest.raises(ValidationError, match="epochs"):
        validate({"epochs": 0}, schema, raise_on_error=True)
    with pytest.raises(ParameterTypeError, match="epochs"):
        retrain.validate_parameters({"epochs": 101})
    assert retrain.validate_parameters({})["epochs"] is None


def test_score_and_check_take_the_model_too() -> None:
    from flows.check import check
    from flows.score import score

    assert list(_schema(score)["properties"]) == ["model_name", "chunks"]
    assert _schema(score)["properties"]["chunks"] == {
        **_schema(score)["properties"]["chunks"], "type": "integer", "default": 4, "minimum": 1}
    assert list(_schema(check)["properties"]) == ["retrain_deployment", "model_name"]


def test_a_named_model_overrides_the_configured_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMDET_MODEL_NAME", "anomdet")
    assert settings_for("fraud").model_name == "fraud"
    assert settings_for(None).model_name == settings_for("").model_name == "anomdet"
