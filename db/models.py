"""SQLAlchemy models of the tables anomdet owns (all prefixed `anomdet_`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MODEL_STATUSES = ("candidate", "champion", "retired", "rejected")
RUN_DECISIONS = ("promoted", "rejected", "failed_validation", "failed", "rolled_back")
RUN_STATES = ("running", "completed", "failed")


def utcnow() -> datetime:
    """Timezone-aware now, the one clock every row uses."""
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: sa.JSON}


class ModelVersion(Base):
    """One trained model: where its artifact is, what made it, how it scored, its status."""

    __tablename__ = "anomdet_model_versions"
    __table_args__ = (
        sa.UniqueConstraint("model_name", "version", name="uq_anomdet_model_versions_version"),
        sa.CheckConstraint(_in("status", MODEL_STATUSES), name="ck_anomdet_model_versions_status"),
        # At most one champion per model name, enforced by the database itself.
        sa.Index(
            "uq_anomdet_model_versions_one_champion",
            "model_name",
            unique=True,
            sqlite_where=sa.text("status = 'champion'"),
            postgresql_where=sa.text("status = 'champion'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_name: Mapped[str] = mapped_column(sa.String(100))
    version: Mapped[int]
    status: Mapped[str] = mapped_column(sa.String(16))
    base_model: Mapped[str] = mapped_column(sa.String(500))
    artifact_uri: Mapped[str] = mapped_column(sa.String(1000))
    weights_sha256: Mapped[str] = mapped_column(sa.String(64))
    data_fingerprint: Mapped[str] = mapped_column(sa.String(64))
    hyperparameters: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    threshold: Mapped[float]
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    flow_run_id: Mapped[str | None] = mapped_column(sa.String(64))
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("anomdet_runs.id"))


class Run(Base):
    """One retraining run (or rollback): what it saw, how both models scored, what it decided."""

    __tablename__ = "anomdet_runs"
    __table_args__ = (
        sa.CheckConstraint(_in("state", RUN_STATES), name="ck_anomdet_runs_state"),
        sa.CheckConstraint(
            "decision IS NULL OR " + _in("decision", RUN_DECISIONS),
            name="ck_anomdet_runs_decision",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_name: Mapped[str] = mapped_column(sa.String(100))
    kind: Mapped[str] = mapped_column(sa.String(16), default="retrain")
    flow_run_id: Mapped[str | None] = mapped_column(sa.String(64))
    started_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    state: Mapped[str] = mapped_column(sa.String(16), default="running")
    parameters: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    data_fingerprint: Mapped[str | None] = mapped_column(sa.String(64))
    validation: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    drift: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    test_rows: Mapped[int | None]
    # Plain ids, not foreign keys: runs and versions point at each other, and SQLite
    # cannot add the cyclic constraint afterwards.
    champion_version_id: Mapped[int | None]
    challenger_version_id: Mapped[int | None]
    challenger_metrics: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    champion_metrics: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    # TF-IDF + logistic regression fitted on the same train split: the bar a BERT must clear.
    baseline_metrics: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    decision: Mapped[str | None] = mapped_column(sa.String(32))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)


class Flag(Base):
    """One flagged record for one model version. Reruns add nothing twice."""

    __tablename__ = "anomdet_flags"
    __table_args__ = (
        sa.UniqueConstraint(
            "record_id", "model_version_id", name="uq_anomdet_flags_record_version"
        ),
        sa.Index("ix_anomdet_flags_model_version_id", "model_version_id"),
        # The view's top rows by score are read from this index, not sorted from all flags.
        sa.Index("ix_anomdet_flags_score", "score"),
    )

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
    )
    # The record's id as the database writes it as text (CAST(id AS TEXT)), so that any
    # id type of the user's table fits: integers of any size, UUIDs, texts of any length.
    record_id: Mapped[str] = mapped_column(sa.Text)
    model_version_id: Mapped[int] = mapped_column(sa.ForeignKey("anomdet_model_versions.id"))
    score: Mapped[float]
    threshold: Mapped[float]
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("anomdet_runs.id"))
    flagged_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    # Hash of the text that was scored (see db.records.text_hash): the view shows a flag
    # only beside the text it was given for.
    text_hash: Mapped[str | None] = mapped_column(sa.String(64))
    # Set by a scoring run that found the record's text changed since this flag was given
    # (see db.repository.retire_changed_flags); cleared when the record is scored again.
    # The views read this mark, a plain column, since SQLite has no hash function built
    # in that they could compare the text with.
    text_changed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class Score(Base):
    """Every scored record's score per model version, with a hash of the text it scored.

    A record is scored once per version and text: incremental scoring looks for records
    without a row here, or whose text hash changed, whatever their id type or order.
    A NULL score means the record had no text to score (it is not tried again until its
    text changes).
    """

    __tablename__ = "anomdet_scores"

    model_version_id: Mapped[int] = mapped_column(
        sa.ForeignKey("anomdet_model_versions.id"), primary_key=True
    )
    record_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    score: Mapped[float | None]
    text_hash: Mapped[str | None] = mapped_column(sa.String(64))
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("anomdet_runs.id"))
    scored_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class ScoreRow(NamedTuple):
    """One record's score, as a scoring pass hands it to be kept: its key (the id as
    text), the score (None: no text to score) and the hash of the text scored."""

    record_id: str
    score: float | None
    text_hash: str | None


@dataclass(frozen=True)
class PendingPromotion:
    """A candidate whose promotion did not finish, with what the run that registered it
    saw and decided, as plain values (the run's fields are None, or empty, when the
    version names no run or its row is gone)."""

    version_id: int
    version: int
    run_id: int | None
    run_state: str | None  # "running" while the run that registered it is alive
    run_started_at: datetime | None
    data_fingerprint: str | None  # of the labelled records the run read
    expected_champion_id: int | None  # the champion the run evaluated against
    threshold: float
    artifact_uri: str
    challenger_metrics: dict[str, Any]
    champion_metrics: dict[str, Any] | None
    baseline_metrics: dict[str, Any] | None
    details: dict[str, Any]
