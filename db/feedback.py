"""What reviewers' labels say about the models, and which records they should label next.

Reviewers give their verdict on a flag in the user's own records table: they set the
record's label to 1 (a real anomaly, the flag is confirmed) or 0 (a false alarm, the
flag is dismissed). Two views read those verdicts, made like `anomdet_flagged` from the
configured mapping (every name quoted by SQLAlchemy):

- `anomdet_version_quality`: per version that has served as champion, its flags, how
  many of them were reviewed since, confirmed and dismissed, the precision of the
  reviewed flags with a 95% Wilson interval, and the share of its flags reviewed.
- `anomdet_label_queue`: the unlabelled records a reviewer should label next, from the
  champion's kept scores (`anomdet_scores`): one record per distinct text, those whose
  score sits closest to the threshold first, with every `sample_every`-th row a
  high-scoring text drawn in a fixed pseudo-random order (its text hash).

Why a label on a flagged record is a verdict given after the flag: anomdet scores, and
so flags, only records that have no label at that moment (`db.records._work`), and the
version that flagged a record read its training data before it scored anything. A label
found on a flagged record whose text still hashes as it did when it was flagged was
therefore given after the flag, and that version never trained on it. No timestamp
column is needed for this, and none is read. A label that was removed and given again
counts as a new verdict; a record whose text changed since it was flagged counts as
not reviewed, since the verdict is on another text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from db.models import Flag, ModelVersion, Run, Score
from db.records import (
    RecordsMapping,
    key_matches,
    label_classes,
    record_key,
    text_hash,
    text_unchanged,
)
from db.repository import ensure_view

QUALITY_VIEW = "anomdet_version_quality"
QUEUE_VIEW = "anomdet_label_queue"

#: z of a two-sided 95% interval.
Z95 = 1.959963984540054

#: Statuses of versions that have flagged records for users (see anomdet_flagged).
SERVED = ("champion", "retired")

NEAR_THRESHOLD = "closest to the threshold"
HIGH_SCORE_SAMPLE = "high score, sampled across distinct texts"


def _float(value: sa.ColumnElement[Any]) -> sa.ColumnElement[float]:
    return sa.cast(value, sa.Float)


def _wilson(confirmed: sa.ColumnElement[Any], reviewed: sa.ColumnElement[Any]
            ) -> tuple[sa.ColumnElement[float], sa.ColumnElement[float]]:
    """The 95% Wilson score interval of confirmed / reviewed, in SQL (NULL when nothing
    was reviewed). Written out because the view must compute it where users query it;
    tests hold it equal to scipy's `binomtest(...).proportion_ci(method="wilson")`."""
    n = _float(sa.func.nullif(reviewed, 0))
    p = _float(confirmed) / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * sa.func.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return centre - half, centre + half


def version_quality_select(records: sa.Table, mapping: RecordsMapping,
                           dialect: sa.Dialect) -> sa.Select:
    """The query behind `anomdet_version_quality`: per served version, its reviewed flags.

    A flag is reviewed when its record still exists, now holds the label 0 or 1, and it
    was given for the record's current text: not marked as given for an earlier one (see
    `db.repository.retire_changed_flags`), and on PostgreSQL its text hash still matches.
    Each flag's record is found through the records' own id index (`key_matches`).
    """
    flags, versions = Flag.__table__, ModelVersion.__table__
    label, text = records.c[mapping.label_column], records.c[mapping.text_column]
    negative, positive = label_classes(label)
    reviewed_record = sa.and_(key_matches(records, mapping, flags.c.record_id, dialect),
                              label.in_((negative, positive)),
                              flags.c.text_changed_at.is_(None),
                              text_unchanged(flags.c.text_hash, text, dialect))
    joined = (versions.outerjoin(flags, flags.c.model_version_id == versions.c.id)
              .outerjoin(records, reviewed_record))
    # Distinct flag ids: an id the user's table holds twice must not count a flag twice.
    counts = (
        sa.select(
            versions.c.model_name, versions.c.version.label("model_version"),
            versions.c.status, versions.c.threshold,
            sa.func.count(sa.distinct(flags.c.id)).label("flags"),
            sa.func.count(sa.distinct(sa.case((label.is_not(None), flags.c.id))))
            .label("reviewed"),
            sa.func.count(sa.distinct(sa.case((label == positive, flags.c.id))))
            .label("confirmed"),
        )
        .select_from(joined)
        .where(versions.c.status.in_([sa.literal_column(f"'{s}'") for s in SERVED]))
        .group_by(versions.c.id, versions.c.model_name, versions.c.version,
                  versions.c.status, versions.c.threshold)
        .subquery("counts")
    )
    low, high = _wilson(counts.c.confirmed, counts.c.reviewed)
    return sa.select(
        counts.c.model_name, counts.c.model_version, counts.c.status, counts.c.threshold,
        counts.c.flags, counts.c.reviewed, counts.c.confirmed,
        (counts.c.reviewed - counts.c.confirmed).label("dismissed"),
        (_float(counts.c.confirmed) / _float(sa.func.nullif(counts.c.reviewed, 0)))
        .label("precision"),
        low.label("precision_low"), high.label("precision_high"),
        (_float(counts.c.reviewed) / _float(sa.func.nullif(counts.c.flags, 0)))
        .label("reviewed_share"),
    )


def label_queue_select(records: sa.Table, mapping: RecordsMapping, dialect: sa.Dialect,
                       sample_every: int) -> sa.Select:
    """The query behind `anomdet_label_queue`, ranked per model by its `rank` column.

    Candidates are the unlabelled records the champion scored (its kept score, so reading
    the queue scores nothing), for their current text: on PostgreSQL the view compares the
    text's md5 with the score's; on SQLite, which has no hash function built in, a text
    edited since is scored again by the next scoring run. Each distinct text appears once,
    as its lowest record id, with `copies` saying how many unlabelled records share it.
    Texts are ranked by how close their score is to the threshold, in log-odds; every
    `sample_every`-th place goes to a text scored at or above the threshold, taken in the
    order of its text hash, a fixed order unrelated to the score, so that the flags
    reviewers see are a fair sample of all the champion's flags, not only its borderline
    ones.
    """
    if sample_every < 2:
        raise ValueError(f"sample_every must be at least 2, got {sample_every}")
    scores, versions = Score.__table__, ModelVersion.__table__
    label, text = records.c[mapping.label_column], records.c[mapping.text_column]
    same_text = (versions.c.model_name, scores.c.text_hash)
    scored = (
        sa.select(
            scores.c.record_id, text.label("text"), scores.c.score, versions.c.threshold,
            versions.c.model_name, versions.c.version.label("model_version"),
            scores.c.text_hash,
            sa.func.row_number().over(partition_by=same_text, order_by=scores.c.record_id)
            .label("copy"),
            sa.func.count().over(partition_by=same_text).label("copies"),
        )
        .select_from(
            scores.join(versions, versions.c.id == scores.c.model_version_id)
            .join(records, key_matches(records, mapping, scores.c.record_id, dialect)))
        .where(versions.c.status == sa.literal_column("'champion'"),
               scores.c.score.is_not(None), label.is_(None),
               text_unchanged(scores.c.text_hash, text, dialect))
        .subquery("scored")
    )
    high = sa.case((scored.c.score >= scored.c.threshold, 1), else_=0)
    distance = sa.func.abs(_log_odds(scored.c.score) - _log_odds(scored.c.threshold))
    texts = (
        sa.select(
            *scored.c,
            sa.func.row_number().over(
                partition_by=scored.c.model_name,
                order_by=(distance, scored.c.record_id)).label("near"),
            sa.case((high == 1, sa.func.row_number().over(
                partition_by=(scored.c.model_name, high),
                order_by=(scored.c.text_hash, scored.c.record_id)))).label("sampled"),
        )
        .where(scored.c.copy == 1)
        .subquery("texts")
    )
    # The k-th sampled text goes after the k * (sample_every - 1) closest texts, so that
    # it lands at rank k * sample_every, unless it is among those closest anyway, where
    # it keeps its closer place (and that sample's turn passes).
    sample_place = texts.c.sampled * (sample_every - 1) + 0.5
    by_sample = sa.and_(texts.c.sampled.is_not(None), sample_place < texts.c.near)
    place = sa.case((by_sample, sample_place), else_=texts.c.near)
    return sa.select(
        sa.func.row_number().over(partition_by=texts.c.model_name,
                                  order_by=(place, texts.c.record_id)).label("rank"),
        texts.c.record_id, texts.c.text, texts.c.score, texts.c.threshold,
        texts.c.model_name, texts.c.model_version,
        sa.case((by_sample, sa.literal(HIGH_SCORE_SAMPLE)),
                else_=sa.literal(NEAR_THRESHOLD)).label("reason"),
        texts.c.copies,
    )


def _log_odds(p: sa.ColumnElement[float]) -> sa.ColumnElement[float]:
    """ln(p / (1 - p)), with p kept within [1e-6, 1 - 1e-6]. Closeness to the threshold is
    measured in log-odds: a fine-tuned model puts most scores near 0 or 1, where equal
    differences of probability mean very different certainty (0.999 and 0.99999 are far
    apart; 0.4 and 0.41 are not)."""
    clamped = sa.case((p < 1e-6, 1e-6), (p > 1 - 1e-6, 1 - 1e-6), else_=p)
    return sa.func.ln(clamped / (1 - clamped))


def ensure_feedback_views(connection: Connection, records: sa.Table, mapping: RecordsMapping,
                          sample_every: int) -> None:
    """Create or update `anomdet_version_quality` and `anomdet_label_queue`."""
    dialect = connection.dialect
    ensure_view(connection, QUALITY_VIEW, version_quality_select(records, mapping, dialect))
    ensure_view(connection, QUEUE_VIEW,
                label_queue_select(records, mapping, dialect, sample_every))


def version_quality(conn: Connection | Session, records: sa.Table, mapping: RecordsMapping,
                    model_name: str) -> dict[int, dict[str, Any]]:
    """`anomdet_version_quality`'s rows of `model_name`, by version number. Read through
    the view's own query, so that it answers before any run has made the view."""
    query = version_quality_select(records, mapping, _dialect(conn)).subquery()
    rows = conn.execute(sa.select(query).where(query.c.model_name == model_name)).mappings()
    return {int(row["model_version"]): dict(row) for row in rows}


def label_queue(conn: Connection | Session, records: sa.Table, mapping: RecordsMapping,
                model_name: str, sample_every: int, limit: int) -> list[dict[str, Any]]:
    """The first `limit` rows of `model_name`'s labelling queue, by rank."""
    query = label_queue_select(records, mapping, _dialect(conn), sample_every).subquery()
    rows = conn.execute(sa.select(query).where(query.c.model_name == model_name)
                        .order_by(query.c.rank).limit(limit)).mappings()
    return [dict(row) for row in rows]


def _dialect(conn: Connection | Session) -> sa.Dialect:
    return conn.get_bind().dialect if isinstance(conn, Session) else conn.dialect


# -- New labels since the champion's training data ------------------------------------

@dataclass(frozen=True)
class LabelNews:
    """How many labels the records table holds that the champion never trained on.

    `reviewed`: labelled records that the champion scored while they were unlabelled,
    so labelled after its training read its data (exact). `labelled_at_training`: the
    records labelled 0 or 1 when the champion's run read them, kept in that run's
    details (None for a champion trained before it was kept). `new` is the larger of
    `reviewed` and `labelled - labelled_at_training`: both count labels given since,
    and neither counts one twice, so `new` never exceeds the true number. With no
    champion, every label is new.
    """

    labelled: int
    reviewed: int
    labelled_at_training: int | None
    champion_version_id: int | None

    @property
    def new(self) -> int:
        grown = self.labelled - (self.labelled_at_training or 0)
        if self.champion_version_id is not None and self.labelled_at_training is None:
            grown = 0  # nothing known of the champion's data: count the exact part only
        return max(self.reviewed, grown, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"labelled": self.labelled, "reviewed": self.reviewed,
                "labelled_at_training": self.labelled_at_training, "new": self.new,
                "champion_version_id": self.champion_version_id}


def count_labelled(conn: Connection, records: sa.Table, mapping: RecordsMapping) -> int:
    """Records labelled 0 or 1."""
    label = records.c[mapping.label_column]
    query = sa.select(sa.func.count()).select_from(records).where(
        label.in_(label_classes(label)))
    return int(conn.execute(query).scalar_one())


def label_news(conn: Connection, records: sa.Table, mapping: RecordsMapping,
               champion: ModelVersion | None) -> LabelNews:
    """The labels given since `champion` read its training data (see `LabelNews`)."""
    labelled = count_labelled(conn, records, mapping)
    if champion is None:
        return LabelNews(labelled, 0, 0, None)
    label, text = records.c[mapping.label_column], records.c[mapping.text_column]
    scores = Score.__table__
    # Driven by the labelled records, each looked up in the scores' primary key.
    scored_unlabelled = sa.exists().where(
        scores.c.model_version_id == champion.id,
        scores.c.record_id == record_key(records, mapping),
        scores.c.text_hash.is_not_distinct_from(text_hash(text)))
    reviewed = int(conn.execute(
        sa.select(sa.func.count()).select_from(records)
        .where(label.in_(label_classes(label)), scored_unlabelled)).scalar_one())
    at_training = None
    if champion.run_id is not None:
        details = conn.execute(sa.select(Run.details).where(Run.id == champion.run_id)
                               ).scalar_one_or_none() or {}
        at_training = (details.get("labels") or {}).get("labelled")
    return LabelNews(labelled, reviewed, at_training, champion.id)
