"""Tasks of the check flow (flows/check.py): what changed since the champion's training
data, whether a retrain is under way, and starting one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from anomdet.artifact import META_FILE
from anomdet.drift import MAX_PROFILE_ROWS, DataProfile, artifact_vocab, compare, profile
from anomdet.settings import Settings
from anomdet.triggers import CheckFindings
from db import repository as repo
from db.engine import get_engine, session_scope
from db.feedback import label_news
from db.models import Run
from db.records import reflect_records_table, sample_unlabelled
from tasks.database import IO_RETRIES, run_logger

#: States of a retraining run that is under way or about to start.
_ACTIVE = [StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]


@task(name="gather findings", cache_policy=NO_CACHE, **IO_RETRIES)
def gather_findings(settings: Settings) -> CheckFindings:
    """New labels, what the last run saw of them, and drift of the unlabelled records."""
    mapping = settings.records.mapping()
    with session_scope(get_engine(settings.database_url)) as session:
        conn = session.connection()
        records = reflect_records_table(conn, mapping)
        champion = repo.get_champion(session=session, model_name=settings.model_name)
        news = label_news(conn, records, mapping, champion)
        champion_id = champion.id if champion else None
        runs = [r for r in repo.recent_runs(session=session, model_name=settings.model_name,
                                            limit=50) if r.kind == "retrain"]
        under_this = [r for r in runs
                      if ((r.details or {}).get("labels") or {}).get("champion_version_id")
                      == champion_id]
        seen = int(under_this[0].details["labels"]["new"]) if under_this else 0
        breaches: tuple[str, ...] = ()
        if champion is not None and settings.review.retrain_on_drift:
            texts = sample_unlabelled(conn, records, mapping, MAX_PROFILE_ROWS)
            breaches = _drift(Path(champion.artifact_uri), texts, settings)
    run_logger().info("%d labels, %d newer than the champion's training data (%d of them "
                      "seen by the last run); drift: %s", news.labelled, news.new, seen,
                      "; ".join(breaches) or "within bounds")
    return CheckFindings(new_labels=news.new, seen_by_last_run=min(seen, news.new),
                         runs_since_champion=len(under_this), drift_breaches=breaches,
                         labels=news.to_dict())


def _drift(artifact: Path, texts: list[str], settings: Settings) -> tuple[str, ...]:
    """The drift bounds that `texts` cross against the champion's training profile."""
    meta_file = artifact / META_FILE
    if not texts or not meta_file.is_file():
        return ()
    reference = json.loads(meta_file.read_text()).get("data_profile")
    if not reference:
        return ()
    frame = pd.DataFrame({"text": texts, "label": [float("nan")] * len(texts)})
    current = profile(frame, artifact_vocab(artifact), seed=settings.training.seed)
    return compare(DataProfile.from_dict(reference), current, settings.drift.bounds()).breaches


@task(name="look for a retrain under way", cache_policy=NO_CACHE)
def retrain_under_way(settings: Settings, deployment_name: str) -> str | None:
    """A retraining run of the model that is running, paused, or queued to start now."""
    promotion = settings.promotion
    # A row left `running` by a process that died stops counting after the run timeout.
    minutes = settings.retrain_timeout_minutes + (
        promotion.approval_timeout_minutes if promotion.require_approval else 0)
    since = datetime.now(UTC) - timedelta(minutes=minutes)
    with session_scope(get_engine(settings.database_url)) as session:
        running = session.scalar(
            sa.select(Run.id).where(Run.model_name == settings.model_name,
                                    Run.kind == "retrain", Run.state == "running",
                                    Run.started_at >= since).limit(1))
    if running is not None:
        return f"run {running} of anomdet_runs is running"
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_name)
        except ObjectNotFound:
            raise ValueError(f"no deployment {deployment_name!r} on the Prefect server: deploy "
                             "prefect.yaml (`prefect --no-prompt deploy --all`) or give the "
                             "check's retrain_deployment parameter") from None
        soon = datetime.now(UTC) + timedelta(minutes=5)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[*_ACTIVE, StateType.SCHEDULED]))))
    for run in runs:
        due = run.expected_start_time or run.next_scheduled_start_time
        if run.state_type in _ACTIVE or (due is not None and due <= soon):
            return f"flow run {run.name} is {run.state_name}"
    return None


@task(name="start the retrain deployment", cache_policy=NO_CACHE)
def start_retrain(deployment_name: str, reasons: list[str]) -> str:
    """Start a run of the retrain deployment and return its name, without waiting for it."""
    run = run_deployment(name=deployment_name, timeout=0, tags=["started-by-check"])
    run_logger().info("started %s of %s: %s", run.name, deployment_name, "; ".join(reasons))
    return run.name
