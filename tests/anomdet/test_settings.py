"""Settings: ANOMDET_ variables are parsed into their groups, bounds and unsafe values are
refused with the variable's name, and variables that set nothing are refused."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from anomdet.settings import (
    DriftSettings,
    Settings,
    TrainingSettings,
    ValidationSettings,
    check_environment,
    debug_requested,
    describe_invalid,
    setting_variables,
)


def test_defaults_need_no_environment() -> None:
    settings = Settings()
    assert settings.database_url == "sqlite:///anomdet.db"
    assert settings.training.base_model == "bundled"
    assert settings.records.mapping().table == "records"


def test_nested_variables_reach_their_group(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("ANOMDET_TRAINING__EPOCHS", "7")
    monkeypatch.setenv("ANOMDET_TRAINING__TARGET_PRECISION", "0.9")
    monkeypatch.setenv("ANOMDET_RECORDS__TABLE", "events")
    monkeypatch.setenv("ANOMDET_RECORDS__TIMESTAMP_COLUMN", "")
    monkeypatch.setenv("ANOMDET_PROMOTION__MUST_BEAT_BASELINE", "true")
    monkeypatch.setenv("ANOMDET_ARTIFACTS_DIR", str(tmp_path / "a"))
    settings = Settings()
    assert settings.training.epochs == 7 and settings.training.target_precision == 0.9
    assert settings.records.table == "events"
    assert settings.promotion.must_beat_baseline is True
    assert settings.artifact_root() == (tmp_path / "a").resolve()


@pytest.mark.parametrize(("variable", "value", "field"), [
    ("ANOMDET_TRAINING__EPOCHS", "0", "epochs"),
    ("ANOMDET_TRAINING__LEARNING_RATE", "-1", "learning_rate"),
    ("ANOMDET_TRAINING__VAL_FRACTION", "0.5", "val_fraction"),
    ("ANOMDET_TRAINING__TARGET_PRECISION", "1.5", "target_precision"),
    ("ANOMDET_CHUNK_SIZE", "10", "chunk_size"),
    ("ANOMDET_CONNECT_TIMEOUT", "0", "connect_timeout"),
    ("ANOMDET_MODEL_NAME", "two words", "model_name"),
    ("ANOMDET_PROMOTION__CONFIDENCE", "0.4", "confidence"),
    ("ANOMDET_DRIFT__ON_BREACH", "explode", "on_breach"),
])
def test_values_out_of_bounds_are_refused(monkeypatch: pytest.MonkeyPatch, variable: str,
                                          value: str, field: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert field in {str(part) for e in caught.value.errors() for part in e["loc"]}


def test_an_unknown_primary_metric_is_refused_before_any_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMDET_PROMOTION__PRIMARY_METRIC", "f2")
    with pytest.raises(ValidationError, match="f2"):
        Settings()


@pytest.mark.parametrize(("value", "phrase"), [
    ("mysql://u@h/db", "sqlite:// or postgresql+psycopg://"),
    ("postgresql+psycopg2://u@h/db", "postgresql+psycopg://"),
    ("not a url", "not a database URL"),
])
def test_database_urls_are_checked(monkeypatch: pytest.MonkeyPatch, value: str,
                                   phrase: str) -> None:
    monkeypatch.setenv("ANOMDET_DATABASE_URL", value)
    with pytest.raises(ValidationError, match=re.escape(phrase)):
        Settings()


def test_unsafe_table_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMDET_RECORDS__TABLE", "records; DROP TABLE x")
    with pytest.raises(ValidationError, match="records"):
        Settings()


def test_a_password_is_masked_when_the_url_is_shown() -> None:
    settings = Settings(database_url="postgresql+psycopg://u:hunter2@db.example/anomdet")
    assert "hunter2" not in settings.safe_database_url()
    assert "db.example" in settings.safe_database_url()


def test_unknown_variables_are_refused_with_the_nearest_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMDET_TRAINNG__EPOCHS", "2")
    with pytest.raises(ValidationError, match="did you mean ANOMDET_TRAINING__EPOCHS"):
        Settings()
    with pytest.raises(ValueError, match="no setting has a similar name"):
        check_environment({"ANOMDET_ZZZZZZZZZZZZZZZZ": "1"})


def test_every_setting_has_a_variable_and_the_others_are_named() -> None:
    names = setting_variables()
    assert "ANOMDET_TRAINING__EPOCHS" in names and "ANOMDET_DATABASE_URL" in names
    assert {"ANOMDET_DEBUG", "ANOMDET_TEST_POSTGRES_URL"} <= set(names)
    check_environment({name: "" for name in names} | {"PATH": "/bin"})


@pytest.mark.parametrize(("value", "on"), [("1", True), ("yes", True), ("0", False),
                                           ("", False), ("off", False)])
def test_debug_switch(value: str, on: bool) -> None:
    assert debug_requested({"ANOMDET_DEBUG": value}) is on


def test_the_domains_config_objects_have_no_defaults_of_their_own() -> None:
    from anomdet.drift import DriftBounds
    from anomdet.finetune import TrainConfig
    from anomdet.promotion import PromotionPolicy
    from anomdet.validation import ValidationConfig
    from db.records import RecordsMapping

    for config in (TrainConfig, PromotionPolicy, ValidationConfig, DriftBounds, RecordsMapping):
        defaulted = [f.name for f in dataclasses.fields(config)
                     if f.default is not dataclasses.MISSING
                     or f.default_factory is not dataclasses.MISSING]
        assert defaulted == [], f"{config.__name__} defaults {defaulted}"


def test_the_configs_are_built_from_the_settings() -> None:
    from anomdet.training import train_config

    training = TrainingSettings(learning_rate=2e-5, max_steps=None, probe_head=False)
    config = train_config(training)
    assert (config.learning_rate, config.max_steps, config.probe_head) == (2e-5, None, False)
    assert config.min_steps == training.min_steps and config.seed == training.seed
    assert ValidationSettings(min_rows=7).config().min_rows == 7
    assert DriftSettings(on_breach="fail").bounds().on_breach == "fail"


@pytest.mark.parametrize(("variable", "value", "named"), [
    ("ANOMDET_PROMOTION__PRIMARY_METRIC", "f2", "ANOMDET_PROMOTION__PRIMARY_METRIC=f2: unknown"),
    ("ANOMDET_PROMOTION__F1_FLOOR", "1.5", "ANOMDET_PROMOTION__F1_FLOOR=1.5: "),
    ("ANOMDET_VALIDATION__ANOMALY_RATE_MIN", "0.9",
     "ANOMDET_VALIDATION__ANOMALY_RATE_MAX=0.5: below ANOMDET_VALIDATION__ANOMALY_RATE_MIN=0.9"),
    ("ANOMDET_VALIDATION__TEXT_MAX_LENGTH", "0", "ANOMDET_VALIDATION__TEXT_MAX_LENGTH=0: "),
    ("ANOMDET_VALIDATION__TEXT_MIN_LENGTH", "30000",
     "ANOMDET_VALIDATION__TEXT_MAX_LENGTH=20000: below ANOMDET_VALIDATION__TEXT_MIN_LENGTH"),
    ("ANOMDET_DRIFT__MAX_LENGTH_KS", "2", "ANOMDET_DRIFT__MAX_LENGTH_KS=2: "),
    ("ANOMDET_TRAINING__MIN_STEPS", "5000",
     "ANOMDET_TRAINING__MAX_STEPS=1200: below ANOMDET_TRAINING__MIN_STEPS=5000"),
    ("ANOMDET_RECORDS__LABEL_COLUMN", "text",
     "ANOMDET_RECORDS__LABEL_COLUMN=text: column 'text' is mapped already"),
    ("ANOMDET_RECORDS__TABLE", "a b", "ANOMDET_RECORDS__TABLE=a b: records table 'a b' is not"),
])
def test_a_refused_setting_is_named_by_its_variable(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    line = describe_invalid(caught.value)
    assert line.startswith(named) and "\n" not in line


def test_a_refused_database_url_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMDET_DATABASE_URL", "mysql://u:hunter2@h/db")
    with pytest.raises(ValidationError) as caught:
        Settings()
    line = describe_invalid(caught.value)
    assert line.startswith("ANOMDET_DATABASE_URL must be") and "hunter2" not in line
