"""Tasks of the check flow (flows/check.py): what changed since the champion's training
data, whether a retrain is under way, and starting one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

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
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from anomdet.drift import MAX_PROFILE_ROWS, unlabelled_drift
from anomdet.settings import Settings
from anomdet.triggers import CheckFindings
from db import repository as repo
from db import service
from tasks.database import IO_RETRIES, run_logger

#: States of a retraining run that is under way or about to start.
_ACTIVE = [StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]


@task(name="gather findings", cache_policy=NO_CACHE, **IO_RETRIES)
def gather_findings(settings: Settings) -> CheckFindings:
    """New labels, what the last run saw of them, and drift of the unlabelled records."""
    found = service.check_inputs(
        settings.engine(), settings.model_name, settings.records.mapping(), recent=50,
        profile_rows=MAX_PROFILE_ROWS if settings.review.retrain_on_drift else None)
    news, breaches = found.news, ()
    if found.unlabelled_texts:  # read only with a champion and retrain_on_drift on
        breaches = unlabelled_drift(Path(found.champion_artifact), found.unlabelled_texts,
                                    settings.drift.bounds(), seed=settings.training.seed)
    findings = CheckFindings.of(news, found.retrain_details, breaches)
    run_logger().info("%d labels, %d newer than the champion's training data (%d of them "
                      "seen by the last run); drift: %s", news.labelled, news.new,
                      findings.seen_by_last_run, "; ".join(breaches) or "within bounds")
    return findings


@task(name="look for a retrain under way", cache_policy=NO_CACHE)
def retrain_under_way(settings: Settings, deployment_name: str) -> str | None:
    """A retraining run of the model that is running, paused, or queued to start now."""
    # A row left `running` by a process that died stops counting after the run timeout.
    since = datetime.now(UTC) - timedelta(minutes=settings.run_timeout_minutes())
    with settings.session() as session:
        running = repo.running_retrain(session=session, model_name=settings.model_name,
                                       started_after=since)
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
def start_retrain(deployment_name: str, reasons: list[str], model_name: str,
                  run_name: str) -> FlowRun:
    """Start a run of the retrain deployment for `model_name`, named `run_name` for good
    as it is created, and return it without waiting for it."""
    run = run_deployment(name=deployment_name, timeout=0, tags=["started-by-check"],
                         parameters={"model_name": model_name}, flow_run_name=run_name)
    run_logger().info("started %s of %s: %s", run.name, deployment_name, "; ".join(reasons))
    return run
